-- Runs that unfold over time (docs/steps.md): sleeps and waits for events as task types, tasks
-- a failed dependency skipped, and the waits the router delivers events to. Expand-only: an
-- older build never writes the new values, and reads them only for runs of definitions it
-- could not have stored.

ALTER TABLE tasks DROP CONSTRAINT tasks_task_type_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_task_type_check
    CHECK (task_type IN ('http', 'kafka', 'human', 'workflow', 'sleep', 'wait_for_event'));
ALTER TABLE tasks DROP CONSTRAINT tasks_status_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_check
    CHECK (status IN ('pending', 'running', 'awaiting_human', 'waiting', 'succeeded', 'failed', 'cancelled', 'skipped'));
-- What a waiting step waits for (`payment.received key o-1`, `sleep`), and until when.
ALTER TABLE tasks ADD COLUMN waiting_for text;
ALTER TABLE tasks ADD COLUMN waiting_until timestamptz;

-- A run waiting for another event: a wait_for_event step (kind 'step', wait_id = its task id)
-- or a cancel_on registration (kind 'cancel', '<run id>/cancel_on/<i>'). The router computes
-- `matcher`'s expression over each event of `event_type` and delivers the event to every open
-- wait with the same key whose `since_ms` is at or before the record's timestamp; the claim
-- (status 'open' to 'delivered') is what makes the delivery happen once.
CREATE TABLE event_waits (
    wait_id           text        PRIMARY KEY,
    kind              text        NOT NULL CHECK (kind IN ('step', 'cancel')),
    run_id            text        NOT NULL,
    event_type        text        NOT NULL,
    -- Topics the event may come from; empty: any the router reads.
    topics            text[]      NOT NULL DEFAULT '{}',
    -- SHA-256 of `incoming`, the CEL expression over the incoming event.
    matcher           text        NOT NULL,
    match_key         text        NOT NULL,
    since_ms          bigint      NOT NULL,
    until_ms          bigint,
    -- open: waiting; delivered: an event claimed it (the run is being told); received: the run
    -- took it; timed_out; closed: the run ended first.
    status            text        NOT NULL DEFAULT 'open'
                      CHECK (status IN ('open', 'delivered', 'received', 'timed_out', 'closed')),
    event             jsonb,
    event_id          text,
    source_topic      text,
    source_partition  integer,
    source_offset     bigint,
    created_at        timestamptz NOT NULL DEFAULT now(),
    delivered_at      timestamptz,
    closed_at         timestamptz
);
CREATE INDEX event_waits_open ON event_waits (event_type, matcher, match_key) WHERE status = 'open';
CREATE INDEX event_waits_delivered ON event_waits (source_topic, source_partition, source_offset) WHERE status = 'delivered';
CREATE INDEX event_waits_by_run ON event_waits (run_id);

-- The incoming expressions of waits that began, so a router computes them for event types no
-- latest definition version waits for any more (a run pinned to an older version still does).
CREATE TABLE wait_matchers (
    event_type  text        NOT NULL,
    matcher     text        NOT NULL,
    incoming    text        NOT NULL,
    last_used   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_type, matcher)
);

-- Events of a type some run may wait for, kept for minutes: a wait that begins looks here for
-- a matching event a router handled while the wait was being recorded (docs/steps.md, "Which
-- events count").
CREATE TABLE waitable_events (
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    event_type  text        NOT NULL,
    record_ms   bigint      NOT NULL,
    event       jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);
CREATE INDEX waitable_events_recent ON waitable_events (event_type, record_ms);
CREATE INDEX waitable_events_age ON waitable_events (received_at);
