-- "The user's shop database" of the demo and the tests, on MariaDB (MySQL-compatible): a
-- database the task factory does not own, read through the `shop` datasource by a role that
-- can only SELECT. Run by scripts/stack and by the mariadb image's init (docker-compose);
-- idempotent.
CREATE DATABASE IF NOT EXISTS shop;
CREATE TABLE IF NOT EXISTS shop.loyalty (
    customer_id VARCHAR(64) PRIMARY KEY,
    points INT NOT NULL,
    member_since DATE NOT NULL,
    balance DECIMAL(10, 2) NOT NULL,
    vip BOOLEAN NOT NULL
);
INSERT IGNORE INTO shop.loyalty VALUES ('c-1001', 420, '2021-03-04', 12.50, TRUE), ('c-1002', 15, '2025-09-30', 0.00, FALSE);
CREATE USER IF NOT EXISTS 'shop_reader'@'%' IDENTIFIED BY 'shop-reader-demo';
GRANT SELECT ON shop.* TO 'shop_reader'@'%';
