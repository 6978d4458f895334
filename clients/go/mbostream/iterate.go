package mbostream

import "iter"

// allOf is the All iterator of a Next/Item/Err/Close reader: the items, then the reader's error,
// if any, once; the reader is closed when the loop ends or breaks.
func allOf[T any](next func() bool, item func() T, err func() error, closeReader func()) iter.Seq2[T, error] {
	return func(yield func(T, error) bool) {
		defer closeReader()
		for next() {
			if !yield(item(), nil) {
				return
			}
		}
		if e := err(); e != nil {
			var zero T
			yield(zero, e)
		}
	}
}
