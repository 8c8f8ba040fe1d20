-- Where a redriven dead letter first came from (its source partition and offset, from the
-- router's `__connect.errors.*` headers). The router gives a redriven plain record the identity
-- of the original (`<topic>-<partition>-<offset>`), so definitions that already ran for it see
-- the same event and deduplicate it (issue 26). Older rows have none: their records keep the
-- identity of the redriven copy.
ALTER TABLE dlq_redrives ADD COLUMN source_partition integer, ADD COLUMN source_offset bigint;
