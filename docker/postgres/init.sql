-- The example source database: the two tables the demo contracts (schemas/*.toml) describe.
-- Debezium's adaptive time precision sends timestamp(6) as microseconds and timestamp(3) as
-- milliseconds, matching the contracts' units.
CREATE TABLE public.customers (
    id             bigint PRIMARY KEY,
    first_name     text,
    last_name      text,
    email          text,
    status         text,
    loyalty_points integer,
    created_at     timestamp(6),
    updated_at     timestamp(6)
);

CREATE TABLE public.orders (
    id          bigint PRIMARY KEY,
    customer_id bigint REFERENCES public.customers (id),
    amount      double precision,
    currency    text,
    status      text,
    order_date  date,
    attributes  jsonb,
    is_gift     boolean,
    updated_at  timestamp(3)
);

-- Deletes must carry the old key (REPLICA IDENTITY DEFAULT does) for bronze's key columns.
INSERT INTO public.customers
SELECT i, 'first' || i, 'last' || i, 'c' || i || '@example.com', 'active', i * 10, now(), now()
FROM generate_series(1, 100) AS i;

INSERT INTO public.orders
SELECT i, 1 + i % 100, round((random() * 500)::numeric, 2), 'EUR', 'new', current_date,
       jsonb_build_object('channel', 'web'), i % 7 = 0, now()
FROM generate_series(1, 1000) AS i;
