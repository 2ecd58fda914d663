//! The tables the dataflow's sinks write: each spec sink's schema, and the values of a row of
//! each kind of record (a count, a ranked ad, a late click, a rejected line).

use super::{GroupKey, LateClick, Positions, RankedAd, RejectedLine};
use crate::clicks::event::{ClickEvent, Country};
use crate::clicks::spec::{DataflowSpec, Field, Op, SinkInput, SlidingWindow};
use crate::sinks::{ColumnKind, Rows, TableSchema, Value};

/// A count's row: `window_start, ad_id, [field], clicks`.
pub(super) fn count_row(second: Option<Field>, &(pane, ad_id, value): &GroupKey, clicks: isize, rows: &mut Rows) {
    rows.values.extend([Value::Timestamp(pane), Value::Integer(ad_id)]);
    rows.values.extend(second.map(|field| field_value(field, value)));
    rows.values.push(Value::Integer(clicks as u64));
}

/// A ranked ad's row: `window_start, window_end, rank, ad_id, clicks`.
pub(super) fn ranked_row(window: SlidingWindow, &(start, (rank, ad_id, clicks)): &RankedAd, rows: &mut Rows) {
    rows.push_row([
        Value::Timestamp(start),
        Value::Timestamp(start + window.size_ms),
        Value::Integer(rank as u64),
        Value::Integer(ad_id),
        Value::Integer(clicks),
    ]);
}

/// A late click's row: the event's fields; from Kafka, after where it came from.
pub(super) fn late_row(positions: &Positions, late: &LateClick, rows: &mut Rows) {
    // A file's late clicks are just the events; Kafka's are keyed by offset.
    let mut row = match positions {
        Positions::Lines => Vec::new(),
        Positions::Offsets { .. } => position_values(positions, late.partition, late.position),
    };
    row.extend(event_values(&late.event));
    rows.push_row(row);
}

/// A rejected line's row: where it came from, `reason, raw`.
pub(super) fn rejected_row(positions: &Positions, line: &RejectedLine, rows: &mut Rows) {
    let mut row = position_values(positions, line.partition, line.position);
    row.extend([Value::Text(line.reason.clone()), Value::Text(line.raw.clone())]);
    rows.push_row(row);
}

fn position_values(positions: &Positions, partition: u32, position: u64) -> Vec<Value> {
    match positions {
        Positions::Lines => vec![Value::Integer(position)],
        Positions::Offsets { topic, incarnations } => {
            let incarnation = incarnations.get(&partition).copied().unwrap_or(0);
            vec![
                Value::Text(topic.clone()),
                Value::Integer(partition as u64),
                Value::Integer(incarnation as u64),
                Value::Integer(position),
            ]
        }
    }
}

fn field_value(field: Field, value: u64) -> Value {
    match field {
        Field::AdId | Field::UserId => Value::Integer(value),
        Field::Country => Value::StaticText(Country(value as u16).as_str()),
        Field::Ip => Value::Text(std::net::Ipv4Addr::from(value as u32).to_string()),
    }
}

fn event_values(event: &ClickEvent) -> [Value; 5] {
    [
        Value::Integer(event.ad_id),
        Value::Integer(event.click_ts),
        Value::Integer(event.user_id),
        field_value(Field::Ip, event.ip as u64),
        field_value(Field::Country, event.country.0 as u64),
    ]
}

fn field_kind(field: Field) -> ColumnKind {
    match field {
        Field::AdId | Field::UserId => ColumnKind::Integer,
        Field::Country | Field::Ip => ColumnKind::Text,
    }
}

/// `window_start, ad_id, [field], clicks`.
pub fn count_schema(name: &str, second: Option<Field>) -> TableSchema {
    let mut columns = vec![("window_start", ColumnKind::Timestamp), ("ad_id", ColumnKind::Integer)];
    if let Some(field) = second {
        columns.push((field.name(), field_kind(field)));
    }
    let key_columns = columns.len();
    columns.push(("clicks", ColumnKind::Count));
    TableSchema::new(name, &columns, key_columns)
}

/// `window_start, window_end, rank, ad_id, clicks`.
pub fn top_schema(name: &str) -> TableSchema {
    use ColumnKind::*;
    TableSchema::new(
        name,
        &[
            ("window_start", Timestamp),
            ("window_end", Timestamp),
            ("rank", Count),
            ("ad_id", Integer),
            ("clicks", Count),
        ],
        3,
    )
}

/// The table a spec sink writes.
pub fn sink_schema(spec: &DataflowSpec, sink: &crate::clicks::spec::SinkSpec, positions: &Positions) -> TableSchema {
    let name = sink.name.as_str();
    match &sink.input {
        SinkInput::Late => late_schema(name, positions),
        SinkInput::Rejected => rejected_schema(name, positions),
        SinkInput::Node(node) => match spec.node(node).map(|n| &n.op) {
            Some(Op::Count { group_by, .. }) => count_schema(name, group_by.get(1).copied()),
            Some(Op::TopN { .. }) => top_schema(name),
            _ => unreachable!("validated: sinks read counts or top_n"),
        },
    }
}

/// Where a record came from: `line` in a file; `topic, partition, incarnation, offset` in Kafka
/// (a partition's offsets repeat only after it lost records, in its next incarnation).
fn position_columns(positions: &Positions) -> Vec<(&'static str, ColumnKind)> {
    use ColumnKind::*;
    match positions {
        Positions::Lines => vec![("line", Count)],
        Positions::Offsets { .. } => {
            vec![("topic", Text), ("partition", Count), ("incarnation", Count), ("offset", Count)]
        }
    }
}

/// The raw event's fields; from Kafka, keyed by where the event came from. A file's late clicks
/// carry only the event's fields (`late_clicks.csv`).
pub fn late_schema(name: &str, positions: &Positions) -> TableSchema {
    use ColumnKind::*;
    let event = [("ad_id", Integer), ("click_ts", Integer), ("user_id", Integer), ("ip", Text), ("country", Text)];
    match positions {
        Positions::Lines => TableSchema::new(name, &event, 0),
        Positions::Offsets { .. } => {
            let mut columns = position_columns(positions);
            let keys = columns.len();
            columns.extend(event);
            TableSchema::new(name, &columns, keys)
        }
    }
}

/// Where the line came from, `reason, raw`.
pub fn rejected_schema(name: &str, positions: &Positions) -> TableSchema {
    use ColumnKind::*;
    let mut columns = position_columns(positions);
    let keys = columns.len();
    columns.extend([("reason", Text), ("raw", Text)]);
    TableSchema::new(name, &columns, keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_match_the_replay_files() {
        let names = |s: TableSchema| s.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>().join(",");
        assert_eq!(names(count_schema("c", None)), "window_start,ad_id,clicks");
        assert_eq!(names(count_schema("c", Some(Field::Country))), "window_start,ad_id,country,clicks");
        assert_eq!(names(top_schema("t")), "window_start,window_end,rank,ad_id,clicks");
        assert_eq!(names(late_schema("l", &Positions::Lines)), "ad_id,click_ts,user_id,ip,country");
        assert_eq!(names(rejected_schema("r", &Positions::Lines)), "line,reason,raw");
        let kafka = Positions::offsets("clicks");
        let late = "topic,partition,incarnation,offset,ad_id,click_ts,user_id,ip,country";
        assert_eq!(names(late_schema("l", &kafka)), late);
        assert_eq!(names(rejected_schema("r", &kafka)), "topic,partition,incarnation,offset,reason,raw");
    }
}
