-- The relay reads only results neither published nor quarantined (issue 26: with its marker
-- missing, say after TF_RELAY_TRANSACTIONAL_ID changed or the marker topic lost compaction, it
-- would otherwise publish the whole outbox again). This index keeps that read as cheap as the
-- marker-ordered one it replaces, however many published rows the table holds.
CREATE INDEX task_results_relay_pending ON task_results (txid, seq) WHERE published_at IS NULL AND quarantined_at IS NULL;
