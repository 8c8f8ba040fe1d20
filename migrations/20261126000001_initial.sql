-- The task factory's tables (see DESIGN.md, "Database"). Every event can be traced to its run
-- (activity_runs.source_*), its tasks (tasks.run_id) and their results (one per task_id).

-- Activity definitions: one immutable row per (id, version). Only `enabled` may change in
-- place; a changed document is a new version, so a run pinned to a version always finds it.
CREATE TABLE activity_definitions (
    id            text        NOT NULL CHECK (id ~ '^[a-z0-9][a-z0-9._-]{0,127}$'),
    version       integer     NOT NULL CHECK (version > 0),
    name          text        NOT NULL,
    enabled       boolean     NOT NULL,
    trigger_kind  text        NOT NULL CHECK (trigger_kind IN ('event', 'cron')),
    spec          jsonb       NOT NULL,
    spec_sha256   text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, version)
);

CREATE FUNCTION activity_definitions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'activity_definitions rows are immutable: % v% cannot be deleted', OLD.id, OLD.version;
    END IF;
    IF (NEW.id, NEW.version, NEW.name, NEW.trigger_kind, NEW.spec, NEW.spec_sha256, NEW.created_at)
       IS DISTINCT FROM
       (OLD.id, OLD.version, OLD.name, OLD.trigger_kind, OLD.spec, OLD.spec_sha256, OLD.created_at) THEN
        RAISE EXCEPTION 'activity_definitions rows are immutable: % v% may only change enabled; store a new version', OLD.id, OLD.version;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER activity_definitions_immutable
    BEFORE UPDATE OR DELETE ON activity_definitions
    FOR EACH ROW EXECUTE FUNCTION activity_definitions_immutable();

-- Runs: one RunActivity workflow each; run_id is the Temporal workflow id.
CREATE TABLE activity_runs (
    run_id              text        PRIMARY KEY,
    definition_id       text        NOT NULL,
    definition_version  integer     NOT NULL,
    dedupe_key          text        NOT NULL,
    trigger_kind        text        NOT NULL CHECK (trigger_kind IN ('event', 'cron', 'manual')),
    -- event trigger: where the event came from
    source_topic        text,
    source_partition    integer,
    source_offset       bigint,
    event_id            text,
    -- cron trigger: which schedule and which nominal time
    schedule_id         text,
    scheduled_for       timestamptz,
    fired_at            timestamptz NOT NULL,
    traceparent         text,
    context             jsonb,
    tasks_spawned       integer     NOT NULL DEFAULT 0 CHECK (tasks_spawned >= 0),
    status              text        NOT NULL DEFAULT 'running'
                        CHECK (status IN ('running', 'completed', 'failed', 'deduplicated', 'cancelled')),
    finished_at         timestamptz,
    FOREIGN KEY (definition_id, definition_version) REFERENCES activity_definitions (id, version),
    CHECK (trigger_kind <> 'event' OR (source_topic IS NOT NULL AND source_partition IS NOT NULL AND source_offset IS NOT NULL)),
    CHECK (trigger_kind <> 'cron' OR (schedule_id IS NOT NULL AND scheduled_for IS NOT NULL))
);
CREATE INDEX activity_runs_by_source ON activity_runs (source_topic, source_partition, source_offset);
CREATE INDEX activity_runs_by_event_id ON activity_runs (event_id);
CREATE INDEX activity_runs_by_definition ON activity_runs (definition_id, dedupe_key);

-- Tasks: one child workflow each; task_id = '<run id>/<template>/<index>', deterministic.
CREATE TABLE tasks (
    task_id       text        PRIMARY KEY,
    run_id        text        NOT NULL REFERENCES activity_runs (run_id),
    template      text        NOT NULL,
    item_index    integer     NOT NULL CHECK (item_index >= 0),
    task_type     text        NOT NULL CHECK (task_type IN ('http', 'kafka', 'human', 'workflow')),
    params        jsonb       NOT NULL,
    status        text        NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'running', 'awaiting_human', 'succeeded', 'failed', 'cancelled')),
    output        jsonb,
    error         text,
    attempts      integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    UNIQUE (run_id, template, item_index)
);
CREATE INDEX tasks_awaiting_human ON tasks (created_at) WHERE status = 'awaiting_human';

-- Dedupe claims (DESIGN.md, dedupe layer 2): the run's first step inserts its claim; a run that
-- finds the key held by another unexpired claim ends as 'deduplicated'. The window is
-- expires_at, independent of Temporal's retention. The router reads these for its fast path.
CREATE TABLE dedupe_claims (
    definition_id  text        NOT NULL,
    dedupe_key     text        NOT NULL,
    run_id         text        NOT NULL,
    claimed_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    PRIMARY KEY (definition_id, dedupe_key),
    CHECK (expires_at > claimed_at)
);
CREATE INDEX dedupe_claims_expiry ON dedupe_claims (expires_at);
