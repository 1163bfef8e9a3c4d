package attribution

import (
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// recordSize is the size of one ring buffer record, laid out as
//
//	 0  u64 pid_tgid   (bpf_get_current_pid_tgid: tgid<<32 | pid, host pid namespace)
//	 8  u64 ktime      (bpf_ktime_get_ns, CLOCK_MONOTONIC)
//	16  u64 cgroup id  (bpf_get_current_cgroup_id: the v2 cgroup's inode)
//	24  [16]byte comm  (bpf_get_current_comm: the calling thread's)
//	40  [16]byte addr  (IPv4 in the first 4 bytes, network order)
//	56  u32 port       (network order in the first 2 bytes, as the kernel gives it)
//	60  u8 protocol    (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP…)
//	61  u8 family      (4 or 6)
//	62  u8 hook        (hookConnect, hookSendmsg)
//	63  u8 padding
const recordSize = 64

const (
	hookConnect = 1
	hookSendmsg = 2
)

// Offsets in struct bpf_sock_addr (include/uapi/linux/bpf.h).
const (
	ctxUserIP4    = 4
	ctxUserIP6    = 8
	ctxUserPort   = 24
	ctxProtocol   = 36
	eventsMapName = "events"
	ringBufBytes  = 1 << 22 // 4 MiB: tens of thousands of records between two reads
)

// hooks are the four programs, each for its attach type.
var hooks = []struct {
	name   string
	attach ebpf.AttachType
	family int
	hook   int
}{
	{"cr_connect4", ebpf.AttachCGroupInet4Connect, 4, hookConnect},
	{"cr_connect6", ebpf.AttachCGroupInet6Connect, 6, hookConnect},
	{"cr_sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, 4, hookSendmsg},
	{"cr_sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, 6, hookSendmsg},
}

// collectionSpec is the ring buffer and the four programs.
func collectionSpec() *ebpf.CollectionSpec {
	cs := &ebpf.CollectionSpec{
		Maps: map[string]*ebpf.MapSpec{
			eventsMapName: {Name: "cr_attr_events", Type: ebpf.RingBuf, MaxEntries: ringBufBytes},
		},
		Programs: map[string]*ebpf.ProgramSpec{},
	}
	for _, h := range hooks {
		cs.Programs[h.name] = &ebpf.ProgramSpec{
			Name:         h.name,
			Type:         ebpf.CGroupSockAddr,
			AttachType:   h.attach,
			License:      "GPL",
			Instructions: program(h.family, h.hook),
		}
	}
	return cs
}

// program builds one hook: fill a record on the stack, copy it into the
// ring buffer (a full ring drops the record, never the call) and return 1,
// which lets the connect or sendmsg go on.
func program(family, hook int) asm.Instructions {
	const base = -recordSize // the record lives at r10-64 … r10-1
	at := func(off int16) int16 { return base + off }
	ins := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1), // r6 = ctx

		asm.FnGetCurrentPidTgid.Call(),
		asm.StoreMem(asm.RFP, at(0), asm.R0, asm.DWord),
		asm.FnKtimeGetNs.Call(),
		asm.StoreMem(asm.RFP, at(8), asm.R0, asm.DWord),
		asm.FnGetCurrentCgroupId.Call(),
		asm.StoreMem(asm.RFP, at(16), asm.R0, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.RFP),
		asm.Add.Imm(asm.R1, int32(at(24))),
		asm.Mov.Imm(asm.R2, 16),
		asm.FnGetCurrentComm.Call(),

		// Zero the address and the tail, then fill them.
		asm.Mov.Imm(asm.R0, 0),
		asm.StoreMem(asm.RFP, at(40), asm.R0, asm.DWord),
		asm.StoreMem(asm.RFP, at(48), asm.R0, asm.DWord),
		asm.StoreMem(asm.RFP, at(56), asm.R0, asm.DWord),
	}
	if family == 4 {
		ins = append(ins,
			asm.LoadMem(asm.R0, asm.R6, ctxUserIP4, asm.Word),
			asm.StoreMem(asm.RFP, at(40), asm.R0, asm.Word),
		)
	} else {
		for i := int16(0); i < 4; i++ {
			ins = append(ins,
				asm.LoadMem(asm.R0, asm.R6, ctxUserIP6+4*i, asm.Word),
				asm.StoreMem(asm.RFP, at(40+4*i), asm.R0, asm.Word),
			)
		}
	}
	ins = append(ins,
		asm.LoadMem(asm.R0, asm.R6, ctxUserPort, asm.Word),
		asm.StoreMem(asm.RFP, at(56), asm.R0, asm.Word),
		asm.LoadMem(asm.R0, asm.R6, ctxProtocol, asm.Word),
		asm.StoreMem(asm.RFP, at(60), asm.R0, asm.Byte),
		asm.StoreImm(asm.RFP, at(61), int64(family), asm.Byte),
		asm.StoreImm(asm.RFP, at(62), int64(hook), asm.Byte),

		asm.LoadMapPtr(asm.R1, 0).WithReference(eventsMapName),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, int32(base)),
		asm.Mov.Imm(asm.R3, recordSize),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnRingbufOutput.Call(),

		asm.Mov.Imm(asm.R0, 1), // allow
		asm.Return(),
	)
	return ins
}
