-- For the availability view (issue 5).
--
-- city: hotels are searched by city (`GET /v1/availability/search?city=...`).
--
-- REPLICA IDENTITY FULL: logical decoding then carries the whole old row of every UPDATE and
-- DELETE, so the view retracts exactly the row it had, without keeping a copy of each table.
ALTER TABLE hotel ADD COLUMN city text NOT NULL DEFAULT '';
CREATE INDEX hotel_by_city ON hotel (city);

ALTER TABLE hotel REPLICA IDENTITY FULL;
ALTER TABLE room_type REPLICA IDENTITY FULL;
ALTER TABLE room_type_inventory REPLICA IDENTITY FULL;
ALTER TABLE reservation REPLICA IDENTITY FULL;
