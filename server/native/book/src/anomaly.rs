//! Anomalies: records the engine cannot apply literally. They are counted, logged, never "fixed" silently.
//!
//! Each kind documents what the engine does with such a record, so a reader of a report knows exactly
//! which book it is looking at.

/// What was wrong with a record, and (in the doc) what the engine did about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AnomalyKind {
    /// `C` for an order id not in the book (normal when a file starts mid-session): ignored.
    CancelUnknownOrder = 0,
    /// `F` with a side (B/A) for an order id not in the book: nothing to change (fills never move the
    /// book; their `C`/`M` does). Side-`N` fills name no resting order (e.g. auction prints) and are
    /// counted as `unattributed_fills` instead.
    FillUnknownOrder = 1,
    /// `M` for an order id not in the book: treated as an add, as Databento's reference book does.
    ModifyUnknownOrder = 2,
    /// `A` for an order id already resting: the old order is removed and the new one added at the back.
    DuplicateAdd = 3,
    /// `C` for more than the order's remaining size: the order is removed.
    CancelExceedsSize = 4,
    /// `M` that moves an order to the other side: removed from its side, added at the back of the other.
    ModifySideChange = 5,
    /// `A`/`M` with size 0 (the add is ignored; the modified order is removed) or `C` with size 0 (no-op).
    ZeroSize = 6,
    /// An action byte outside A, C, M, R, T, F, N: ignored.
    UnknownAction = 7,
    /// `A`/`M` whose side is neither B nor A: ignored.
    UnknownSide = 8,
    /// `A`/`M` without F_TOB whose price is UNDEF_PRICE: ignored.
    UndefinedPrice = 9,
}

/// Number of anomaly kinds (the length of per-book counter arrays).
pub const ANOMALY_KIND_COUNT: usize = 10;

impl AnomalyKind {
    /// Every kind, in discriminant order.
    pub const ALL: [AnomalyKind; ANOMALY_KIND_COUNT] = [
        AnomalyKind::CancelUnknownOrder,
        AnomalyKind::FillUnknownOrder,
        AnomalyKind::ModifyUnknownOrder,
        AnomalyKind::DuplicateAdd,
        AnomalyKind::CancelExceedsSize,
        AnomalyKind::ModifySideChange,
        AnomalyKind::ZeroSize,
        AnomalyKind::UnknownAction,
        AnomalyKind::UnknownSide,
        AnomalyKind::UndefinedPrice,
    ];

    /// Stable snake_case name used in reports, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::CancelUnknownOrder => "cancel_unknown_order",
            AnomalyKind::FillUnknownOrder => "fill_unknown_order",
            AnomalyKind::ModifyUnknownOrder => "modify_unknown_order",
            AnomalyKind::DuplicateAdd => "duplicate_add",
            AnomalyKind::CancelExceedsSize => "cancel_exceeds_size",
            AnomalyKind::ModifySideChange => "modify_side_change",
            AnomalyKind::ZeroSize => "zero_size",
            AnomalyKind::UnknownAction => "unknown_action",
            AnomalyKind::UnknownSide => "unknown_side",
            AnomalyKind::UndefinedPrice => "undefined_price",
        }
    }
}

/// One anomaly with the context needed to find the record again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    /// Position of the record in everything this market has applied (0-based).
    pub record_index: u64,
    pub instrument_id: u32,
    pub publisher_id: u16,
    pub order_id: u64,
    pub sequence: u32,
    pub ts_event: u64,
    pub action: u8,
    pub side: u8,
}
