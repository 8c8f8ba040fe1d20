-- Flow control (docs/flow-control.md): runs that wait for a limit, runs a rate limit skipped,
-- and the rows that hold and order slots. Expand-only: an older build never writes the new
-- statuses, and reads them only for definitions with a flow_control block, which it cannot
-- have stored.

ALTER TABLE activity_runs DROP CONSTRAINT activity_runs_status_check;
ALTER TABLE activity_runs ADD CONSTRAINT activity_runs_status_check
    CHECK (status IN ('running', 'waiting', 'completed', 'failed', 'deduplicated', 'cancelled', 'skipped'));
-- Why a run waits (`concurrency 2/2 key c-1`) or was skipped (`rate_limited 5/1m key c-1`).
ALTER TABLE activity_runs ADD COLUMN status_reason text;
-- When flow control last let the run execute (NULL for runs of definitions without limits).
ALTER TABLE activity_runs ADD COLUMN admitted_at timestamptz;

-- One row per limit and key in use. Taking it FOR UPDATE serializes the decisions of one key
-- across every router and worker; it also carries the throttle's schedule.
CREATE TABLE flow_keys (
    flow_limit  text        NOT NULL,  -- '<kind>:<definition or budget>'
    key         text        NOT NULL,
    capacity    integer     NOT NULL DEFAULT 0,
    -- throttle: when the key's spaced starts catch up with the clock (GCRA's theoretical arrival)
    next_start  timestamptz,
    PRIMARY KEY (flow_limit, key)
);

-- Holders (granted_at set) and waiters (granted_at NULL) of concurrency slots and throttled
-- starts. A row counts only while its run is live (`running` or `waiting`), so a run that ended
-- without releasing (a terminated workflow the reconciler settled) frees its slot anyway.
CREATE TABLE flow_slots (
    flow_limit  text        NOT NULL,
    key         text        NOT NULL,
    holder      text        NOT NULL,  -- a run id, or a task id for a task's budget
    run_id      text        NOT NULL,
    wake        text        NOT NULL,  -- the workflow to signal when a slot frees
    priority    bigint      NOT NULL DEFAULT 0,
    arrived_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    granted_at  timestamptz,
    PRIMARY KEY (flow_limit, key, holder)
);
CREATE INDEX flow_slots_waiting ON flow_slots (flow_limit, key, priority DESC, arrived_at, holder) WHERE granted_at IS NULL;
CREATE INDEX flow_slots_by_run ON flow_slots (run_id);

-- Rate-limit decisions, one per run: a redelivery, a retried activity or a replay gets the same
-- answer.
CREATE TABLE flow_decisions (
    run_id        text        PRIMARY KEY,
    flow_limit    text        NOT NULL,
    key           text        NOT NULL,
    window_start  timestamptz NOT NULL,
    admitted      boolean     NOT NULL,
    decided_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX flow_decisions_by_window ON flow_decisions (flow_limit, key, window_start) WHERE admitted;
