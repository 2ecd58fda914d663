-- Trips across shards (issue 14): the coordinator's log and the saga's log, on the trip's home
-- shard (`claims::home_shard(trip_id)`).
--
-- A trip row is written (committed) before any leg is booked; its primary key makes the first
-- use of a trip_id win, and its content (guest, mode, legs) tells a repeat from a reuse.
--
-- status: 'pending' (its legs are being booked, prepared or decided), 'confirmed', 'failed'
-- (nothing of it is booked: rolled back, or every booked leg compensated), 'compensating' (a
-- saga whose legs booked so far are being cancelled), 'cancelling' / 'cancelled' (DELETE).
-- decision: two-phase commit only; written (committed) before phase two, and only where it is
-- still NULL, so the coordinator and recovery (which aborts an undecided trip once its
-- prepared transactions are older than the prepare timeout) can never decide both ways.
-- failure: the error answered when the trip failed, answered again to a repeat.
CREATE TABLE trip (
    trip_id      uuid PRIMARY KEY,
    guest_id     bigint NOT NULL,
    mode         text NOT NULL CHECK (mode IN ('2pc', 'saga')),
    legs         jsonb NOT NULL,
    participants integer[] NOT NULL,
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'confirmed', 'failed', 'compensating', 'cancelling', 'cancelled')),
    decision     text CHECK (decision IN ('commit', 'abort')),
    failure      jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- What recovery and `rooms in-doubt` look for.
CREATE INDEX trip_unfinished ON trip (updated_at) WHERE status IN ('pending', 'compensating', 'cancelling');

-- The saga log: one row per leg, its state after each step ('pending', 'booked', 'failed':
-- refused, 'compensated': booked, then cancelled by the saga, 'cancelled': by DELETE).
CREATE TABLE trip_leg (
    trip_id        uuid NOT NULL REFERENCES trip ON DELETE CASCADE,
    leg            integer NOT NULL,
    reservation_id uuid NOT NULL,
    hotel_id       bigint NOT NULL,
    state          text NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'booked', 'failed', 'compensated', 'cancelled')),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (trip_id, leg)
);
