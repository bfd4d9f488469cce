#ifndef IPACTR_BPF_H
#define IPACTR_BPF_H

#include <stdint.h>

/* One eBPF instruction (struct bpf_insn, without bit fields for Swift). */
struct ipactr_bpf_insn {
    uint8_t code;
    uint8_t regs; /* dst_reg in the low 4 bits, src_reg in the high 4 */
    int16_t off;
    int32_t imm;
};

/* Loads a BPF_PROG_TYPE_CGROUP_DEVICE program; returns its fd, or -1 with
   errno set and the verifier's log (NUL-terminated) in `log`. */
int ipactr_bpf_device_program(const struct ipactr_bpf_insn *insns, unsigned count, char *log, unsigned log_size);

/* Attaches a device program to a cgroup v2 directory fd (BPF_F_ALLOW_MULTI:
   programs a parent or the container itself attaches still apply). */
int ipactr_bpf_attach_device(int program_fd, int cgroup_fd);

#endif
