// Command seccompprobe is what an attacker would bring into a sandbox: a
// static binary that makes raw syscalls the sandbox's seccomp profile should
// refuse, and opens sockets of many address families. It prints one line per
// probe, "<name> ok" or "<name> <ERRNO>", for TestSeccomp in sandbox_test.go.
// Arguments are chosen so that a syscall that gets past seccomp returns
// something other than EPERM where the kernel allows (a bad fd, a bad
// pointer, a missing pid) and does no harm when it succeeds.
package main

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

const noSuchPID = 999999

func result(r1 uintptr, errno unix.Errno) string {
	if errno != 0 {
		return unix.ErrnoName(errno)
	}
	return "ok"
}

func closing(r1, _ uintptr, errno unix.Errno) (uintptr, unix.Errno) {
	if errno == 0 {
		unix.Close(int(r1))
	}
	return r1, errno
}

func main() {
	badFD, atFDCWD := -1, unix.AT_FDCWD
	var params [120]byte // struct io_uring_params
	var handle struct {
		bytes uint32
		typ   int32
		data  [128]byte
	}
	handle.bytes = 128
	var mountID int32
	root := []byte("/\x00")
	buf := make([]byte, 8)
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))

	probes := []struct {
		name string
		call func() (uintptr, unix.Errno)
	}{
		{"io_uring_setup", func() (uintptr, unix.Errno) {
			return closing(unix.Syscall(unix.SYS_IO_URING_SETUP, 1, uintptr(unsafe.Pointer(&params)), 0))
		}},
		{"io_uring_enter", func() (uintptr, unix.Errno) {
			r, _, e := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(badFD), 0, 0, 0, 0, 0)
			return r, e
		}},
		{"io_uring_register", func() (uintptr, unix.Errno) {
			r, _, e := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(badFD), 0, 0, 0, 0, 0)
			return r, e
		}},
		{"bpf", func() (uintptr, unix.Errno) {
			r, _, e := unix.Syscall(unix.SYS_BPF, 0x7fff, 0, 0) // unknown command
			return r, e
		}},
		{"perf_event_open", func() (uintptr, unix.Errno) {
			r, _, e := unix.Syscall6(unix.SYS_PERF_EVENT_OPEN, 0, 0, uintptr(badFD), uintptr(badFD), 0, 0)
			return r, e
		}},
		{"userfaultfd", func() (uintptr, unix.Errno) {
			return closing(unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|1 /* UFFD_USER_MODE_ONLY */, 0, 0))
		}},
		{"keyctl", func() (uintptr, unix.Errno) {
			r, _, e := unix.Syscall6(unix.SYS_KEYCTL, 0x7fff, 0, 0, 0, 0, 0) // unknown operation
			return r, e
		}},
		{"add_key", func() (uintptr, unix.Errno) {
			r, _, e := unix.Syscall6(unix.SYS_ADD_KEY, 0, 0, 0, 0, 0, 0) // NULL type
			return r, e
		}},
		{"request_key", func() (uintptr, unix.Errno) {
			r, _, e := unix.Syscall6(unix.SYS_REQUEST_KEY, 0, 0, 0, 0, 0, 0)
			return r, e
		}},
		{"kexec_load", func() (uintptr, unix.Errno) {
			r, _, e := unix.Syscall6(unix.SYS_KEXEC_LOAD, 0, 0, 0, 0xffff0000, 0, 0) // invalid flags
			return r, e
		}},
		{"kexec_file_load", kexecFileLoad},
		{"open_by_handle_at", func() (uintptr, unix.Errno) {
			return closing(unix.Syscall(unix.SYS_OPEN_BY_HANDLE_AT, uintptr(badFD), uintptr(unsafe.Pointer(&handle)), unix.O_RDONLY))
		}},
		{"name_to_handle_at", func() (uintptr, unix.Errno) {
			r, _, e := unix.Syscall6(unix.SYS_NAME_TO_HANDLE_AT, uintptr(atFDCWD), uintptr(unsafe.Pointer(&root[0])),
				uintptr(unsafe.Pointer(&handle)), uintptr(unsafe.Pointer(&mountID)), 0, 0)
			return r, e
		}},
		{"ptrace", func() (uintptr, unix.Errno) {
			r, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_ATTACH, noSuchPID, 0, 0, 0, 0)
			return r, e
		}},
		{"process_vm_readv", func() (uintptr, unix.Errno) {
			r, _, e := unix.Syscall6(unix.SYS_PROCESS_VM_READV, noSuchPID, uintptr(unsafe.Pointer(&iov)), 1, uintptr(unsafe.Pointer(&iov)), 1, 0)
			return r, e
		}},
		{"process_vm_writev", func() (uintptr, unix.Errno) {
			r, _, e := unix.Syscall6(unix.SYS_PROCESS_VM_WRITEV, noSuchPID, uintptr(unsafe.Pointer(&iov)), 1, uintptr(unsafe.Pointer(&iov)), 1, 0)
			return r, e
		}},
	}
	for _, p := range probes {
		fmt.Println(p.name, result(p.call()))
	}

	// unix.Socket is socket(2) on 64-bit platforms and socketcall(2) on
	// 32-bit x86, the two ways into the kernel's socket code.
	families := []struct {
		name   string
		family int
		typ    int
		proto  int
	}{
		{"AF_UNIX", unix.AF_UNIX, unix.SOCK_STREAM, 0},
		{"AF_INET", unix.AF_INET, unix.SOCK_STREAM, 0},
		{"AF_INET6", unix.AF_INET6, unix.SOCK_STREAM, 0},
		{"AF_NETLINK", unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_ROUTE},
		{"AF_PACKET", unix.AF_PACKET, unix.SOCK_DGRAM, 0},
		{"AF_BLUETOOTH", unix.AF_BLUETOOTH, unix.SOCK_STREAM, 0},
		{"AF_ALG", unix.AF_ALG, unix.SOCK_SEQPACKET, 0},
		{"AF_KEY", unix.AF_KEY, unix.SOCK_RAW, 2 /* PF_KEY_V2 */},
		{"AF_VSOCK", unix.AF_VSOCK, unix.SOCK_STREAM, 0},
		{"AF_XDP", unix.AF_XDP, unix.SOCK_RAW, 0},
		{"AF_TIPC", unix.AF_TIPC, unix.SOCK_RDM, 0},
		{"AF_RDS", unix.AF_RDS, unix.SOCK_SEQPACKET, 0},
		{"AF_CAN", unix.AF_CAN, unix.SOCK_DGRAM, 1 /* CAN_BCM */},
		{"AF_APPLETALK", unix.AF_APPLETALK, unix.SOCK_DGRAM, 0},
		{"AF_X25", unix.AF_X25, unix.SOCK_SEQPACKET, 0},
		{"AF_LLC", unix.AF_LLC, unix.SOCK_DGRAM, 0},
		{"AF_SMC", unix.AF_SMC, unix.SOCK_STREAM, 0},
		{"AF_KCM", unix.AF_KCM, unix.SOCK_DGRAM, 0},
		{"AF_QIPCRTR", unix.AF_QIPCRTR, unix.SOCK_DGRAM, 0},
		{"AF_MCTP", unix.AF_MCTP, unix.SOCK_DGRAM, 0},
	}
	for _, f := range families {
		fd, err := unix.Socket(f.family, f.typ|unix.SOCK_CLOEXEC, f.proto)
		fmt.Println("socket/"+f.name, errResult(err))
		if err == nil {
			unix.Close(fd)
		}
	}
	for _, f := range []struct {
		name   string
		family int
		typ    int
	}{
		{"AF_UNIX", unix.AF_UNIX, unix.SOCK_STREAM},
		{"AF_PACKET", unix.AF_PACKET, unix.SOCK_DGRAM},
		{"AF_TIPC", unix.AF_TIPC, unix.SOCK_DGRAM},
		{"AF_VSOCK", unix.AF_VSOCK, unix.SOCK_STREAM},
	} {
		fds, err := unix.Socketpair(f.family, f.typ|unix.SOCK_CLOEXEC, 0)
		fmt.Println("socketpair/"+f.name, errResult(err))
		if err == nil {
			unix.Close(fds[0])
			unix.Close(fds[1])
		}
	}
}

func errResult(err error) string {
	if err == nil {
		return "ok"
	}
	if e, ok := err.(unix.Errno); ok {
		return unix.ErrnoName(e)
	}
	return err.Error()
}
