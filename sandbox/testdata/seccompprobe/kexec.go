//go:build !386

package main

import "golang.org/x/sys/unix"

func kexecFileLoad() (uintptr, unix.Errno) {
	badFD := -1
	r, _, e := unix.Syscall6(unix.SYS_KEXEC_FILE_LOAD, uintptr(badFD), uintptr(badFD), 0, 0, 0, 0)
	return r, e
}
