-- The W3C traceparent a result record carries as a Kafka header, so consumers of
-- taskfactory.results continue the run's trace (NULL for results queued before this column).
ALTER TABLE task_results ADD COLUMN traceparent text;
