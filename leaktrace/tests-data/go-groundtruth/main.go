// Ground truth for leaktrace's Go symbolizer: the runtime's own answers.
//
// Prints, for stacks captured in many kinds of places (inlined helpers,
// closures, methods, wrappers, generics, goroutines, defers, panics,
// stdlib callbacks), every runtime.CallersFrames frame; then
// runtime.FuncForPC/FileLine for PCs across the executable mapping, and
// the exe mappings so the reader can compute the PIE load bias.
package main

import (
	"bufio"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
)

var out = bufio.NewWriterSize(os.Stdout, 1<<20)

// extra holds version-specific cases (see gm.go).
var extra []func()

// grab is small enough to be inlined, so runtime.Callers is called from
// inlined code in most captures.
func grab() []uintptr {
	pcs := make([]uintptr, 128)
	return pcs[:runtime.Callers(0, pcs)]
}

//go:noinline
func dump(label string, pcs []uintptr) {
	fmt.Fprintf(out, "STACK\t%s\n", label)
	frames := runtime.CallersFrames(pcs)
	for {
		f, more := frames.Next()
		fmt.Fprintf(out, "F\t%#x\t%#x\t%t\t%d\t%s\t%s\n", f.PC, f.Entry, f.Func != nil, f.Line, f.File, f.Function)
		if !more {
			break
		}
	}
	fmt.Fprintf(out, "END\n")
}

//go:noinline
func leaf() { dump("leaf", grab()) }

func inlC() { dump("inline-chain", grab()) }
func inlB() { inlC() }
func inlA() { inlB() }

//go:noinline
func chain() { inlA() }

type T struct{ n int }

func (t T) Val() { dump("value-method", grab()) }

//go:noinline
func (t *T) Ptr() {
	func() { dump("closure-in-method", grab()) }()
}

type I interface{ Val() }

var iface I = &T{1}

//go:noinline
func viaInterface() { iface.Val() }

//go:noinline
func callFn(f func()) { f() }

//go:noinline
func Gen[X any](x X) { dump("generic-"+fmt.Sprint(x), grab()) }

type Box[X any] struct{ v X }

//go:noinline
func (b *Box[X]) Get() X {
	dump("generic-method", grab())
	return b.v
}

func worker(wg *sync.WaitGroup, n int) {
	defer wg.Done()
	dump("goroutine-"+strconv.Itoa(n), grab())
}

//go:noinline
func withDefer() {
	defer func() { dump("defer", grab()) }()
}

//go:noinline
func withPanic() {
	defer func() {
		recover()
		dump("recover-nil-map", grab())
	}()
	var m map[string]int
	m["x"] = 1
}

var nilT *T

//go:noinline
func deref() int { return nilT.n }

//go:noinline
func withSigpanic() {
	defer func() {
		recover()
		dump("recover-sigpanic", grab())
	}()
	deref()
}

//go:noinline
func viaSort() {
	s := []int{3, 1, 2, 5, 4}
	done := false
	sort.Slice(s, func(i, j int) bool {
		if !done {
			done = true
			dump("sort-callback", grab())
		}
		return s[i] < s[j]
	})
}

//go:noinline
func viaStringsMap() {
	done := false
	strings.Map(func(r rune) rune {
		if !done {
			done = true
			dump("strings-map-callback", grab())
		}
		return r
	}, "abc")
}

func main() {
	fmt.Fprintf(out, "VERSION\t%s\n", runtime.Version())
	leaf()
	chain()
	t := T{2}
	t.Val()
	(&t).Ptr()
	viaInterface()
	callFn(t.Val)
	callFn(func() { dump("closure-arg", grab()) })
	func() { dump("closure-immediate", grab()) }()
	Gen(7)
	Gen("s")
	(&Box[float64]{1.5}).Get()
	var wg sync.WaitGroup
	wg.Add(2)
	go worker(&wg, 1)
	go func() {
		defer wg.Done()
		dump("goroutine-closure", grab())
	}()
	wg.Wait()
	withDefer()
	withPanic()
	withSigpanic()
	viaSort()
	viaStringsMap()
	for _, f := range extra {
		f()
	}

	for name, fn := range map[string]interface{}{
		"main.leaf":      leaf,
		"main.chain":     chain,
		"main.callFn":    callFn,
		"fmt.Fprintf":    fmt.Fprintf,
		"runtime.GC":     runtime.GC,
		"strings.Map":    strings.Map,
		"sort.Slice":     sort.Slice,
		"main.worker":    worker,
		"main.deref":     deref,
		"os.ReadFile":    os.ReadFile,
		"main.withPanic": withPanic,
	} {
		fmt.Fprintf(out, "SYM\t%s\t%#x\n", name, reflect.ValueOf(fn).Pointer())
	}
	sweep()
	out.Flush()
}

// sweep prints FuncForPC for every byte of main.* code and a sample of the
// rest of the executable mapping.
func sweep() {
	exe, err := os.Executable()
	if err != nil {
		panic(err)
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		panic(err)
	}
	type span struct{ start, end uintptr }
	var code []span
	for _, line := range strings.Split(string(maps), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || f[5] != exe {
			continue
		}
		fmt.Fprintf(out, "MAP\t%s\t%s\t%s\n", f[0], f[1], f[2])
		if strings.Contains(f[1], "x") {
			r := strings.SplitN(f[0], "-", 2)
			s, _ := strconv.ParseUint(r[0], 16, 64)
			e, _ := strconv.ParseUint(r[1], 16, 64)
			code = append(code, span{uintptr(s), uintptr(e)})
		}
	}
	for _, c := range code {
		for pc := c.start; pc < c.end; pc++ {
			f := runtime.FuncForPC(pc)
			if f == nil {
				continue
			}
			name := f.Name()
			if !strings.HasPrefix(name, "main.") && pc%61 != 0 {
				continue
			}
			file, line := f.FileLine(pc)
			fmt.Fprintf(out, "PC\t%#x\t%#x\t%d\t%s\t%s\n", pc, f.Entry(), line, file, name)
		}
	}
}
