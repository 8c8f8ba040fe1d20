-- Run lists (API `GET /runs`, the console, `tf runs list`) count each run's published results,
-- and a run's lineage reads its results: both by run_id, which had no index, so every listed
-- run scanned the whole outbox.
CREATE INDEX task_results_by_run ON task_results (run_id);
