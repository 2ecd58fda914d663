//! The three ways to keep a night from being oversold, as pgbench scripts, so that the choice
//! made in [`clickstay::rooms::booking`] rests on measurement (`cargo bench --bench rooms
//! -- --strategies`). Each script books the same stays (see [`DRAW_STAY`]) and is correct on its
//! own; the `no_overbooking` CHECK guards all three.
//!
//! - `conditional`: the application's statement, one UPDATE that takes a room only where one is
//!   left, then COMMIT or ROLLBACK (pipelined with BEGIN in the application).
//! - `for-update`: SELECT ... FOR UPDATE locks the nights and checks them, then UPDATE and
//!   INSERT: two more round trips while holding the locks.
//! - `optimistic`: read the nights and their versions without locks, then UPDATE only the rows
//!   whose version is unchanged; a concurrent change makes the attempt fail (a real client
//!   would retry).

use crate::pgbench::{COMMIT_IF_ALL_NIGHTS, DRAW_STAY, script as conditional_script};

/// The nights of the drawn stay, for the scripts below.
const STAY_NIGHTS: &str = "hotel_id = :hotel::bigint AND room_type_id = :room_type::integer
   AND date >= (:first_night::date + :offset::integer)
   AND date < (:first_night::date + :offset::integer + :nights::integer)";

const INSERT_RESERVATION: &str =
    "INSERT INTO reservation (reservation_id, hotel_id, room_type_id, start_date, end_date, guest_id, status)
SELECT gen_random_uuid(), :hotel::bigint, :room_type::integer, (:first_night::date + :offset::integer),
       (:first_night::date + :offset::integer + :nights::integer), :client_id::bigint, 'confirmed'";

fn for_update_script() -> String {
    format!(
        "{DRAW_STAY}BEGIN;
SELECT count(*) FILTER (WHERE total_reserved < floor(total_inventory * overbooking_ratio)) AS free_nights
  FROM (SELECT total_reserved, total_inventory, overbooking_ratio FROM room_type_inventory
         WHERE {STAY_NIGHTS} ORDER BY date FOR UPDATE) AS locked
\\gset
\\if :free_nights = :nights
UPDATE room_type_inventory SET total_reserved = total_reserved + 1, version = version + 1 WHERE {STAY_NIGHTS};
{INSERT_RESERVATION};
COMMIT;
\\else
ROLLBACK;
\\endif
"
    )
}

fn optimistic_script() -> String {
    format!(
        "{DRAW_STAY}SELECT coalesce(array_agg(version ORDER BY date)::text, '{{}}') AS versions,
       count(*) FILTER (WHERE total_reserved < floor(total_inventory * overbooking_ratio)) AS free_nights
  FROM room_type_inventory WHERE {STAY_NIGHTS}
\\gset
\\if :free_nights = :nights
BEGIN;
WITH nights AS (
    UPDATE room_type_inventory i
       SET total_reserved = i.total_reserved + 1, version = i.version + 1
      FROM unnest(:versions::bigint[]) WITH ORDINALITY AS seen(version, n)
     WHERE i.hotel_id = :hotel::bigint AND i.room_type_id = :room_type::integer
       AND i.date = (:first_night::date + :offset::integer) + (seen.n::integer - 1)
       AND i.version = seen.version
    RETURNING 1
), booked AS (
    {INSERT_RESERVATION}
     WHERE (SELECT count(*) FROM nights) = :nights::integer
    RETURNING 1
)
SELECT (SELECT count(*) FROM nights)::int AS nights_taken, (SELECT count(*) FROM booked)::int AS inserted
{COMMIT_IF_ALL_NIGHTS}\\endif
"
    )
}

/// Every strategy: its name and its pgbench script.
pub fn all() -> Vec<(&'static str, String)> {
    vec![
        ("conditional", conditional_script()),
        ("for-update", for_update_script()),
        ("optimistic", optimistic_script()),
    ]
}
