// Prints, from the DWARF of the program named by its argument, or its own
// (Go's debug/dwarf, independent of leaktrace's reader), the byte offsets of the runtime structures leaktrace
// reads to find what a blocked goroutine waits on: one line per type,
// `type <name> size <n>` followed by `field <name> <offset>` lines.
//
// The channel and timer operations below only make sure every type is in
// the binary.
package main

import (
	"debug/dwarf"
	"debug/elf"
	"fmt"
	"os"
	"time"
)

var types = []string{
	"runtime.g", "runtime.sudog", "runtime.hchan", "runtime.waitq",
	"runtime.timer", "runtime.p", "runtime.timers", "runtime.timerWhen",
	"runtime.maybeTraceablePtr", "runtime.maybeTraceableChan",
}

func main() {
	ch := make(chan int, 1)
	ch <- 1
	t := time.NewTicker(time.Hour)
	select {
	case <-ch:
	case <-t.C:
	case <-time.After(time.Hour):
	}
	t.Stop()

	exe, err := os.Executable()
	if err != nil {
		panic(err)
	}
	if len(os.Args) > 1 {
		exe = os.Args[1]
	}
	f, err := elf.Open(exe)
	if err != nil {
		panic(err)
	}
	d, err := f.DWARF()
	if err != nil {
		panic(err)
	}
	want := map[string]bool{}
	for _, t := range types {
		want[t] = true
	}
	r := d.Reader()
	for {
		e, err := r.Next()
		if err != nil {
			panic(err)
		}
		if e == nil {
			break
		}
		if e.Tag != dwarf.TagStructType {
			continue
		}
		name, _ := e.Val(dwarf.AttrName).(string)
		if !want[name] {
			continue
		}
		want[name] = false
		ty, err := d.Type(e.Offset)
		if err != nil {
			panic(err)
		}
		st := ty.(*dwarf.StructType)
		fmt.Printf("type %s size %d\n", name, st.ByteSize)
		for _, f := range st.Field {
			fmt.Printf("field %s %d\n", f.Name, f.ByteOffset)
		}
	}
}
