package main

import "golang.org/x/sys/unix"

// 32-bit x86 has no kexec_file_load; ENOSYS says so without a syscall.
func kexecFileLoad() (uintptr, unix.Errno) { return 0, unix.ENOSYS }
