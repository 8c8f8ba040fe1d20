-- When BeginRun recorded the run (the run "began"), beside fired_at (when Temporal accepted the
-- start): the gap is the worker's queueing delay, which tf-loadtest steady reports. Runs
-- recorded before this migration have none.
ALTER TABLE activity_runs ADD COLUMN began_at timestamptz;
ALTER TABLE activity_runs ALTER COLUMN began_at SET DEFAULT now();
