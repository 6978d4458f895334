//! The instrument universe: CME Globex futures with their tick grids, start prices and symbols.

use crate::InstrumentSpec;

/// Databento publisher id of CME Globex MDP 3.0 (`GLBX.MDP3`).
pub(crate) const GLBX_MDP3: u16 = 1;

const MONTHLY: &[u8] = b"FGHJKMNQUVXZ";
const QUARTERLY: &[u8] = b"HMUZ";
const GOLD: &[u8] = b"GJMQVZ";
const COPPER_SILVER: &[u8] = b"HKNUZ";

/// A futures product; the n-th instrument is contract `n / PRODUCTS.len()` of product `n % len`.
struct Product {
    root: &'static str,
    /// Listed contract months, as CME month codes.
    cycle: &'static [u8],
    /// Index in `cycle` and last year digit of the front contract.
    front: usize,
    year: usize,
    /// Tick size and start price (in ticks) in 1e-9 units; start > `ladder::CENTER` keeps prices positive.
    tick: i64,
    start_ticks: i64,
    channel_id: u8,
    /// Below `ID_STRIDE`, so `base_id + contract * ID_STRIDE` is unique across the universe.
    base_id: u32,
}

const ID_STRIDE: u32 = 100_003;

#[rustfmt::skip]
const PRODUCTS: [Product; 12] = [
    Product { root: "ES",  cycle: QUARTERLY, front: 3, year: 6, tick: 250_000_000, start_ticks: 26_600, channel_id: 10, base_id: 5_002 },
    Product { root: "NQ",  cycle: QUARTERLY, front: 3, year: 6, tick: 250_000_000, start_ticks: 98_000, channel_id: 10, base_id: 4_916 },
    Product { root: "CL",  cycle: MONTHLY,   front: 11, year: 6, tick: 10_000_000, start_ticks: 6_540, channel_id: 11, base_id: 42_140 },
    Product { root: "GC",  cycle: GOLD,      front: 0, year: 7, tick: 100_000_000, start_ticks: 36_500, channel_id: 12, base_id: 28_211 },
    Product { root: "ZN",  cycle: QUARTERLY, front: 0, year: 7, tick: 15_625_000, start_ticks: 7_200, channel_id: 13, base_id: 67_120 },
    Product { root: "6E",  cycle: QUARTERLY, front: 3, year: 6, tick: 50_000, start_ticks: 23_300, channel_id: 14, base_id: 33_370 },
    Product { root: "SI",  cycle: COPPER_SILVER, front: 4, year: 6, tick: 5_000_000, start_ticks: 6_300, channel_id: 12, base_id: 29_102 },
    Product { root: "NG",  cycle: MONTHLY,   front: 11, year: 6, tick: 1_000_000, start_ticks: 3_250, channel_id: 11, base_id: 42_871 },
    Product { root: "ZB",  cycle: QUARTERLY, front: 0, year: 7, tick: 31_250_000, start_ticks: 3_744, channel_id: 13, base_id: 67_502 },
    Product { root: "RTY", cycle: QUARTERLY, front: 3, year: 6, tick: 100_000_000, start_ticks: 24_500, channel_id: 10, base_id: 6_100 },
    Product { root: "HG",  cycle: COPPER_SILVER, front: 4, year: 6, tick: 500_000, start_ticks: 9_700, channel_id: 12, base_id: 29_980 },
    Product { root: "YM",  cycle: QUARTERLY, front: 3, year: 6, tick: 1_000_000_000, start_ticks: 46_500, channel_id: 10, base_id: 5_371 },
];

/// An instrument as the generator needs it: the public spec plus feed details.
pub(crate) struct Listing {
    pub(crate) spec: InstrumentSpec,
    pub(crate) channel_id: u8,
    pub(crate) start_ticks: i64,
}

/// The `index`-th instrument of the universe; depends on `index` only, never on the seed.
pub(crate) fn listing(index: u32) -> Listing {
    let product = &PRODUCTS[index as usize % PRODUCTS.len()];
    let contract = (index as usize / PRODUCTS.len()) as u32;
    Listing {
        spec: InstrumentSpec {
            instrument_id: product.base_id + contract * ID_STRIDE,
            publisher_id: GLBX_MDP3,
            symbol: symbol(product, contract as usize),
            tick: product.tick,
            start_price: product.start_ticks * product.tick,
        },
        channel_id: product.channel_id,
        start_ticks: product.start_ticks,
    }
}

/// `contract` months after the front month: "ESZ6", "ESH7", …; past ten years of listings the
/// single-digit year repeats, so a ":<decade>" suffix keeps the name unique.
fn symbol(product: &Product, contract: usize) -> String {
    let listed = product.cycle.len() * 10;
    let position = product.front + contract % listed;
    let month = product.cycle[position % product.cycle.len()] as char;
    let year = (product.year + position / product.cycle.len()) % 10;
    match contract / listed {
        0 => format!("{}{month}{year}", product.root),
        decade => format!("{}{month}{year}:{decade}", product.root),
    }
}
