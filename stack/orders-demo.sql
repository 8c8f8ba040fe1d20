-- "The user's orders database" of the demo and the tests: a database the task factory does not
-- own, read through the `orders` datasource by a role that can only read. Run by scripts/stack
-- (as the postgres superuser) and by the postgres image's init (docker-compose); idempotent.
SELECT 'CREATE ROLE orders_reader LOGIN PASSWORD ''orders-reader-demo''' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orders_reader')\gexec
SELECT 'CREATE DATABASE orders' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'orders')\gexec
\connect orders
CREATE TABLE IF NOT EXISTS customers (
    id text PRIMARY KEY,
    name text NOT NULL,
    tier text NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    id text PRIMARY KEY,
    customer_id text NOT NULL REFERENCES customers,
    amount numeric(10, 2) NOT NULL,
    placed_at timestamptz NOT NULL DEFAULT '2026-11-01T00:00:00Z'
);
INSERT INTO customers VALUES ('c-1001', 'Acme Corp', 'gold'), ('c-1002', 'Globex', 'silver') ON CONFLICT DO NOTHING;
INSERT INTO orders (id, customer_id, amount) VALUES ('o-1', 'c-1001', 120.50), ('o-2', 'c-1001', 80.00), ('o-3', 'c-1002', 15.25)
    ON CONFLICT DO NOTHING;
GRANT CONNECT ON DATABASE orders TO orders_reader;
GRANT USAGE ON SCHEMA public TO orders_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO orders_reader;
ALTER ROLE orders_reader SET default_transaction_read_only = on;
