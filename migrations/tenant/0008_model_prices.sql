-- What a model costs this org, per million tokens in US dollars, where it differs
-- from the built-in table (analytics/prices.rs).
CREATE TABLE model_prices (
    provider     text NOT NULL,
    model        text NOT NULL,
    input        double precision NOT NULL CHECK (input >= 0),
    output       double precision NOT NULL CHECK (output >= 0),
    cached       double precision NOT NULL CHECK (cached >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, model)
);
