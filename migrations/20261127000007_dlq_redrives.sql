-- Dead letters sent back to their source topic (tf-api): one row per DLQ record, so redriving
-- is idempotent per DLQ offset.
CREATE TABLE dlq_redrives (
    dlq_topic text NOT NULL,
    dlq_partition integer NOT NULL,
    dlq_offset bigint NOT NULL,
    target_topic text NOT NULL,
    target_partition integer,
    target_offset bigint,
    redriven_by text NOT NULL,
    redriven_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);
