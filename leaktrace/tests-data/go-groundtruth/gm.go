//go:build go1.27

package main

// Generic methods of generic types (Go 1.27+), whose printed names have two
// "[...]" groups.

type Pair[A any] struct{ a A }

//go:noinline
func (p *Pair[A]) Map[B any](f func(A) B) B {
	dump("generic-method-of-generic-type", grab())
	return f(p.a)
}

func init() {
	extra = append(extra, func() {
		p := &Pair[int]{1}
		_ = p.Map(func(x int) string { return "" })
	})
}
