-- Debounce (docs/flow-control.md): the open burst of each debounced key. The run of the
-- burst's latest event (by event time) is the one that executes; the row goes when it does, so
-- the next event opens a burst.
CREATE TABLE flow_bursts (
    flow_limit    text        NOT NULL,
    key           text        NOT NULL,
    latest_run    text        NOT NULL,
    latest_event_ms bigint    NOT NULL,
    started_at    timestamptz NOT NULL,
    last_event_at timestamptz NOT NULL,
    PRIMARY KEY (flow_limit, key)
);
