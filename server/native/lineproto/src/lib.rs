//! mbostream-lineproto: InfluxDB line protocol from raw MBO records and event rows.
