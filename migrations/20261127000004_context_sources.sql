-- How each context source of a run was obtained: kind, datasource, cache hit or miss (and the
-- cached answer's age), time taken. Beside the context snapshot, not inside it, so definitions
-- keep seeing exactly the values their sources gave.
ALTER TABLE activity_runs ADD COLUMN context_sources jsonb;
