-- Where each published result landed on taskfactory.results, so a run's lineage runs from its
-- source offset to its results' offsets.
ALTER TABLE task_results ADD COLUMN published_partition integer, ADD COLUMN published_offset bigint;
