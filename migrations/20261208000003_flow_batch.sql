-- Batches (docs/flow-control.md): the events of one key gathered into one run. The batch's
-- first run owns it and executes once it is full or its wait passed; the other runs join it and
-- end skipped. Rows stay for the claim retention (a retried run plans with the same events).
CREATE TABLE flow_batches (
    owner_run   text        PRIMARY KEY,
    flow_limit  text        NOT NULL,
    key         text        NOT NULL,
    opened_at   timestamptz NOT NULL,
    closed_at   timestamptz,
    size        integer     NOT NULL,
    bytes       bigint      NOT NULL,
    events      jsonb       NOT NULL
);
-- One open batch per key.
CREATE UNIQUE INDEX flow_batches_open ON flow_batches (flow_limit, key) WHERE closed_at IS NULL;

-- Which batch each run's event went into, so a run that looks again gets the same answer.
CREATE TABLE flow_batch_members (
    run_id      text        PRIMARY KEY,
    owner_run   text        NOT NULL
);
CREATE INDEX flow_batch_members_by_owner ON flow_batch_members (owner_run);
