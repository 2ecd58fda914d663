-- Reservation ids unique across shards (issue 11).
--
-- An id's home shard (`claims::home_shard`: its low 64 bits modulo the number of shards) holds
-- a claim row, taken before the booking on the hotel's shard. The primary key makes the first
-- use of an id win on one database, whichever shards the hotels of two concurrent first uses
-- live on. The claim keeps the booking's content: a repeat with the same content books (or
-- finds) the same reservation, other content is refused (422). It also tells GET and DELETE
-- which shard holds the reservation.
--
-- state: 'claimed' (taken; the booking may have been sold out, or not committed yet: a crash
-- in between is completed by the client's idempotent retry), 'booked', 'cancelled' (a
-- cancellation releases the nights, not the id). Only a claim whose hotel or room type does
-- not exist is deleted (nothing can ever be booked under that content); any other stays bound
-- to its first content, so that no race between a release and a concurrent repeat that got a
-- room can let one id name two reservations. A new stay takes a new id.
CREATE TABLE reservation_claim (
    reservation_id uuid PRIMARY KEY,
    hotel_id       bigint NOT NULL,
    room_type_id   integer NOT NULL,
    start_date     date NOT NULL,
    end_date       date NOT NULL,
    guest_id       bigint NOT NULL,
    state          text NOT NULL DEFAULT 'claimed' CHECK (state IN ('claimed', 'booked', 'cancelled')),
    claimed_at     timestamptz NOT NULL DEFAULT now()
);
