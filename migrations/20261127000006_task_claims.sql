-- Who took a human task from the inbox (an API token's name), so two people do not work on it.
ALTER TABLE tasks ADD COLUMN claimed_by text, ADD COLUMN claimed_at timestamptz;
