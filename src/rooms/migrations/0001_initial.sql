-- Hotels, room types, nightly inventory and reservations.
--
-- Every table has a primary key (logical decoding needs one to identify rows).
--
-- Overbooking: a hotel may sell more rooms than it has (overbooking_ratio, default 1.00).
-- A CHECK may only look at its own row, so the ratio is copied down to room_type and
-- room_type_inventory and kept equal by foreign keys with ON UPDATE CASCADE: changing
-- hotel.overbooking_ratio rewrites the copies, and each inventory row's CHECK is then
-- re-evaluated, so the database refuses a ratio that would leave a night overbooked.

CREATE TABLE hotel (
    hotel_id          bigint PRIMARY KEY CHECK (hotel_id >= 0),
    name              text NOT NULL,
    overbooking_ratio numeric(4, 2) NOT NULL DEFAULT 1.00
                      CHECK (overbooking_ratio >= 1.00 AND overbooking_ratio <= 2.00),
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (hotel_id, overbooking_ratio)
);

CREATE TABLE room_type (
    hotel_id          bigint NOT NULL,
    room_type_id      integer NOT NULL CHECK (room_type_id >= 0),
    name              text NOT NULL,
    overbooking_ratio numeric(4, 2) NOT NULL DEFAULT 1.00,
    PRIMARY KEY (hotel_id, room_type_id),
    UNIQUE (hotel_id, room_type_id, overbooking_ratio),
    FOREIGN KEY (hotel_id, overbooking_ratio)
        REFERENCES hotel (hotel_id, overbooking_ratio) ON UPDATE CASCADE
);

CREATE TABLE room_type_inventory (
    hotel_id          bigint NOT NULL,
    room_type_id      integer NOT NULL,
    date              date NOT NULL,
    total_inventory   integer NOT NULL CHECK (total_inventory >= 0),
    total_reserved    integer NOT NULL DEFAULT 0 CHECK (total_reserved >= 0),
    overbooking_ratio numeric(4, 2) NOT NULL DEFAULT 1.00,
    -- Bumped by every change: lets readers (and the CDC view) order the states of a night.
    version           bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (hotel_id, room_type_id, date),
    FOREIGN KEY (hotel_id, room_type_id, overbooking_ratio)
        REFERENCES room_type (hotel_id, room_type_id, overbooking_ratio) ON UPDATE CASCADE,
    -- The database itself refuses overbooking, whatever the application does.
    CONSTRAINT no_overbooking CHECK (total_reserved <= floor(total_inventory * overbooking_ratio))
);

CREATE TABLE reservation (
    reservation_id uuid PRIMARY KEY,
    hotel_id       bigint NOT NULL,
    room_type_id   integer NOT NULL,
    start_date     date NOT NULL,
    end_date       date NOT NULL,
    guest_id       bigint NOT NULL,
    status         text NOT NULL DEFAULT 'confirmed' CHECK (status IN ('confirmed', 'cancelled')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    cancelled_at   timestamptz,
    CHECK (end_date > start_date),
    FOREIGN KEY (hotel_id, room_type_id) REFERENCES room_type (hotel_id, room_type_id)
);

CREATE INDEX reservation_by_stay ON reservation (hotel_id, room_type_id, start_date);
