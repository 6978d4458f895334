package mbostream

import v1 "github.com/mbostream/mbostream/clients/go/gen/mbostream/v1"

// DecodedAgain is m as a book stream with ReuseUpdates hands it to the codec (for the benchmarks).
func DecodedAgain(m *v1.StreamBookResponse) any { return reusedBookResponse{m} }
