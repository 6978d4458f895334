package mbostream

// Price room: int64 fixed-point prices (1e-9) and their decimal strings, for the edges only.

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

const (
	// PriceScale is the number of price units in 1.0: prices are integers in units of 1e-9.
	PriceScale = 1_000_000_000
	// PriceDecimals is the number of decimals a formatted price always has.
	PriceDecimals = 9
	// UndefPrice is DBN's "no price" (INT64_MAX), e.g. on a Clear record.
	UndefPrice = math.MaxInt64
)

// FormatPrice formats a 1e-9 fixed-point price with all nine decimals (65400000000 →
// "65.400000000"), as the server's JSON book does; UndefPrice gives "". Integer arithmetic only:
// no float ever touches a price.
func FormatPrice(price int64) string {
	if price == UndefPrice {
		return ""
	}
	return string(AppendPrice(make([]byte, 0, 24), price))
}

// AppendPrice appends FormatPrice(price) to dst (nothing for UndefPrice), without allocating when
// dst has room.
func AppendPrice(dst []byte, price int64) []byte {
	if price == UndefPrice {
		return dst
	}
	magnitude := uint64(price)
	if price < 0 {
		dst = append(dst, '-')
		magnitude = -magnitude // two's complement: exact even for math.MinInt64
	}
	dst = strconv.AppendUint(dst, magnitude/PriceScale, 10)
	dst = append(dst, '.')
	frac := magnitude % PriceScale
	for div := uint64(PriceScale / 10); div > 0; div /= 10 {
		dst = append(dst, byte('0'+frac/div%10))
	}
	return dst
}

// ParsePrice parses a decimal string ("65.4", "-0.25", "3") into a 1e-9 fixed-point price,
// exactly; more than nine decimals, or a value outside int64, is an error.
func ParsePrice(text string) (int64, error) {
	s := strings.TrimSpace(text)
	negative := strings.HasPrefix(s, "-")
	s = strings.TrimLeft(s, "+-")
	if len(strings.TrimSpace(text))-len(s) > 1 {
		return 0, fmt.Errorf("mbostream: not a decimal price: %q", text)
	}
	whole, frac, _ := strings.Cut(s, ".")
	if (whole == "" && frac == "") || !digits(whole) || !digits(frac) {
		return 0, fmt.Errorf("mbostream: not a decimal price: %q", text)
	}
	if len(frac) > PriceDecimals {
		return 0, fmt.Errorf("mbostream: more than %d decimals: %q", PriceDecimals, text)
	}
	units, err := strconv.ParseUint(whole+frac+strings.Repeat("0", PriceDecimals-len(frac)), 10, 64)
	if err != nil || units > math.MaxInt64 || (!negative && units == UndefPrice) {
		return 0, fmt.Errorf("mbostream: price out of range: %q", text)
	}
	if negative {
		return -int64(units), nil
	}
	return int64(units), nil
}

func digits(s string) bool {
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Flags are the DBN flag bits of one record (the StreamEvents flags column).
type Flags uint8

// The DBN flag bits.
const (
	// FlagLast marks the last record of a venue event: a book is consistent only after it.
	FlagLast Flags = 128
	// FlagTOB marks a top-of-book message that replaces the whole side.
	FlagTOB Flags = 64
	// FlagSnapshot marks a record of a book snapshot (replayed, not live).
	FlagSnapshot Flags = 32
	// FlagMBP marks an aggregated price level rather than an individual order.
	FlagMBP Flags = 16
	// FlagBadTsRecv marks an inaccurate ts_recv.
	FlagBadTsRecv Flags = 8
	// FlagMaybeBadBook marks an unrecoverable gap in the venue's channel.
	FlagMaybeBadBook Flags = 4
)

var flagNames = [...]struct {
	flag Flags
	name string
}{
	{FlagLast, "LAST"}, {FlagTOB, "TOB"}, {FlagSnapshot, "SNAPSHOT"},
	{FlagMBP, "MBP"}, {FlagBadTsRecv, "BAD_TS_RECV"}, {FlagMaybeBadBook, "MAYBE_BAD_BOOK"},
}

// Has reports whether every bit of mask is set.
func (f Flags) Has(mask Flags) bool { return f&mask == mask }

// String names the set bits, e.g. "LAST|SNAPSHOT"; unknown bits are shown in hex, no bit as "0".
func (f Flags) String() string {
	var names []string
	rest := f
	for _, n := range flagNames {
		if f.Has(n.flag) {
			names = append(names, n.name)
			rest &^= n.flag
		}
	}
	if rest != 0 {
		names = append(names, fmt.Sprintf("0x%02x", uint8(rest)))
	}
	if len(names) == 0 {
		return "0"
	}
	return strings.Join(names, "|")
}

// The action column's bytes.
const (
	ActionAdd    byte = 'A'
	ActionCancel byte = 'C'
	ActionModify byte = 'M'
	ActionClear  byte = 'R'
	ActionTrade  byte = 'T'
	ActionFill   byte = 'F'
	ActionNone   byte = 'N'
)

// The side column's bytes.
const (
	SideBid  byte = 'B'
	SideAsk  byte = 'A'
	SideNone byte = 'N'
)
