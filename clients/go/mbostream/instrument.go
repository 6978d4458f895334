package mbostream

// Selector room: an instrument as callers name it, by numeric id or raw symbol.

import (
	"strconv"

	v1 "github.com/mbostream/mbostream/clients/go/gen/mbostream/v1"
)

// Instrument selects one instrument by numeric id (ID) or raw symbol (Symbol), optionally on one
// publisher. The zero Instrument selects nothing: the server answers it with ErrInvalidRequest.
type Instrument struct {
	id        uint32
	symbol    string
	bySymbol  bool
	byID      bool
	publisher uint32
}

// ID selects an instrument by its numeric instrument_id from the DBN records.
func ID(instrumentID uint32) Instrument { return Instrument{id: instrumentID, byID: true} }

// Symbol selects an instrument by raw symbol, e.g. "CLX5".
func Symbol(symbol string) Instrument { return Instrument{symbol: symbol, bySymbol: true} }

// OnPublisher restricts the selection to one publisher (0: every publisher the instrument is on;
// for GetBook, its first one).
func (i Instrument) OnPublisher(publisherID uint32) Instrument {
	i.publisher = publisherID
	return i
}

// String is the symbol or the id, with "@publisher" when one is set.
func (i Instrument) String() string {
	var s string
	switch {
	case i.bySymbol:
		s = i.symbol
	case i.byID:
		s = strconv.FormatUint(uint64(i.id), 10)
	default:
		s = "<no instrument>"
	}
	if i.publisher != 0 {
		s += "@" + strconv.FormatUint(uint64(i.publisher), 10)
	}
	return s
}

func (i Instrument) selector() *v1.InstrumentSelector {
	sel := &v1.InstrumentSelector{PublisherId: i.publisher}
	switch {
	case i.bySymbol:
		sel.Selector = &v1.InstrumentSelector_Symbol{Symbol: i.symbol}
	case i.byID:
		sel.Selector = &v1.InstrumentSelector_InstrumentId{InstrumentId: i.id}
	}
	return sel
}

func selectors(instruments []Instrument) []*v1.InstrumentSelector {
	out := make([]*v1.InstrumentSelector, len(instruments))
	for n, i := range instruments {
		out[n] = i.selector()
	}
	return out
}
