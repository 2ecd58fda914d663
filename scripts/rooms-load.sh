#!/usr/bin/env bash
# A short booking load on a running `clickstay rooms serve` (the rooms demo's, scripts/run.sh rooms).
#
#   scripts/rooms-load.sh URL [BOOKINGS] [HOTELS]
#
# Posts BOOKINGS (default 300) reservations, about 20 a second, the way a client does: an id
# from POST /v1/reservation-ids, then POST /v1/reservations. Half go to hotel 1 (the
# dashboard's default), the rest to hotels 2..HOTELS (default 10); room type 1 or 2, 1 to 4
# nights within the next two weeks. Prints how many answered each status.
set -euo pipefail

url=${1:?usage: scripts/rooms-load.sh URL [BOOKINGS] [HOTELS]}
bookings=${2:-300}
hotels=${3:-10}
declare -A statuses=()
for i in $(seq "$bookings"); do
    if [ $((RANDOM % 2)) = 0 ]; then hotel=1; else hotel=$((2 + RANDOM % (hotels - 1))); fi
    first=$((RANDOM % 14))
    nights=$((1 + RANDOM % 4))
    start=$(date -u -d "+$first days" +%F)
    end=$(date -u -d "+$((first + nights)) days" +%F)
    id=$(curl -sf -XPOST "$url/v1/reservation-ids?hotel_id=$hotel" | sed 's/.*"reservation_id":"\([^"]*\)".*/\1/') || break
    body="{\"reservation_id\":\"$id\",\"hotel_id\":$hotel,\"room_type_id\":$((1 + RANDOM % 2)),\"start_date\":\"$start\",\"end_date\":\"$end\",\"guest_id\":$i}"
    status=$(curl -s -o /dev/null -w '%{http_code}' -XPOST "$url/v1/reservations" -H 'content-type: application/json' -d "$body") || break
    statuses[$status]=$((${statuses[$status]:-0} + 1))
    sleep 0.05
done
summary=""
for status in "${!statuses[@]}"; do summary+=" $status: ${statuses[$status]}"; done
echo "rooms-load: $bookings bookings posted;$summary (201 confirmed, 409 sold out)" >&2
