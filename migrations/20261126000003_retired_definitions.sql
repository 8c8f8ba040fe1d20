-- Removing a definition: its versions stay (runs are pinned to them), marked retired and
-- disabled. Like `enabled`, `retired` may change in place; the immutability trigger only
-- guards the content columns.
ALTER TABLE activity_definitions ADD COLUMN retired boolean NOT NULL DEFAULT false;
