-- Which Temporal execution holds a claim: a retried activity of the same execution keeps its
-- claim; another execution with the same workflow id (a schedule backfill, or a start after
-- Temporal's retention) finds it taken and ends as 'deduplicated'.
ALTER TABLE dedupe_claims ADD COLUMN execution_id text NOT NULL DEFAULT '';
ALTER TABLE activity_runs ADD COLUMN execution_id text NOT NULL DEFAULT '';

-- Results outbox (DESIGN.md, dedupe layer 4): a task's last activity inserts its result here,
-- once per task_id whatever the retries; the relay publishes rows to taskfactory.results inside
-- Kafka transactions together with its progress marker (txid, seq).
--
-- seq alone is not a safe marker: a transaction holding a lower seq can commit after a higher
-- one was relayed. The relay only reads rows whose inserting transaction is older than every
-- transaction still running (txid < snapshot xmin), in (txid, seq) order, so nothing can appear
-- behind its marker.
CREATE TABLE task_results (
    task_id       text        PRIMARY KEY REFERENCES tasks (task_id),
    run_id        text        NOT NULL,
    seq           bigserial   NOT NULL,
    txid          bigint      NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    record        jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX task_results_relay_order ON task_results (txid, seq);
