/*
 * A minimal virtio-mmio driver for the virtio-rng device (subzero demo,
 * KVM tests). Entered in 64-bit mode at CPL0, identity-mapped, interrupts
 * off. Parameters at PARAMS (see src/demo/virtio.rs):
 *
 *   1. resets the device, negotiates VERSION_1 only, sets up queue 0 with
 *      8 entries at ring (descriptors), ring+0x1000 (avail), ring+0x2000 (used)
 *   2. requests times: posts one device-writable buffer of len bytes at
 *      buf + i * len, kicks queue 0 (QueueNotify), and polls the used ring
 *      until the device returned it (no interrupts needed)
 *   3. writes poweroff_value to poweroff_port, and halts forever
 *
 * Setup makes 18 MMIO register writes; each request adds one notify
 * write, which KVM turns into an ioeventfd signal when Subzero registered one.
 */
        .intel_syntax noprefix
        .code64
        .set PARAMS, 0x5000
        .set P_BASE,           0x00
        .set P_REQUESTS,       0x08
        .set P_LEN,            0x10
        .set P_RING,           0x18
        .set P_BUF,            0x20
        .set P_POWEROFF_PORT,  0x28
        .set P_POWEROFF_VALUE, 0x30

        .set R_DRV_FEAT,     0x20
        .set R_DRV_FEAT_SEL, 0x24
        .set R_QUEUE_SEL,    0x30
        .set R_QUEUE_NUM,    0x38
        .set R_QUEUE_READY,  0x44
        .set R_QUEUE_NOTIFY, 0x50
        .set R_STATUS,       0x70
        .set R_DESC_LO,      0x80
        .set R_DESC_HI,      0x84
        .set R_AVAIL_LO,     0x90
        .set R_AVAIL_HI,     0x94
        .set R_USED_LO,      0xa0
        .set R_USED_HI,      0xa4

        .text
        .globl _start
_start:
        mov     ebp, PARAMS
        mov     rbx, [rbp + P_BASE]

        /* 1. reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK */
        mov     dword ptr [rbx + R_STATUS], 0
        mov     dword ptr [rbx + R_STATUS], 1
        mov     dword ptr [rbx + R_STATUS], 3
        mov     dword ptr [rbx + R_DRV_FEAT_SEL], 1
        mov     dword ptr [rbx + R_DRV_FEAT], 1
        mov     dword ptr [rbx + R_DRV_FEAT_SEL], 0
        mov     dword ptr [rbx + R_DRV_FEAT], 0
        mov     dword ptr [rbx + R_STATUS], 0xb

        mov     dword ptr [rbx + R_QUEUE_SEL], 0
        mov     dword ptr [rbx + R_QUEUE_NUM], 8
        mov     r12, [rbp + P_RING]
        mov     rax, r12
        mov     [rbx + R_DESC_LO], eax
        shr     rax, 32
        mov     [rbx + R_DESC_HI], eax
        lea     rax, [r12 + 0x1000]
        mov     [rbx + R_AVAIL_LO], eax
        shr     rax, 32
        mov     [rbx + R_AVAIL_HI], eax
        lea     rax, [r12 + 0x2000]
        mov     [rbx + R_USED_LO], eax
        shr     rax, 32
        mov     [rbx + R_USED_HI], eax
        mov     dword ptr [rbx + R_QUEUE_READY], 1
        mov     dword ptr [rbx + R_STATUS], 0xf

        /* 2. requests */
        xor     ecx, ecx
        mov     r13, [rbp + P_REQUESTS]
1:
        cmp     rcx, r13
        jae     3f
        mov     eax, ecx
        and     eax, 7
        shl     eax, 4
        lea     rdi, [r12 + rax]
        mov     rax, rcx
        imul    rax, [rbp + P_LEN]
        add     rax, [rbp + P_BUF]
        mov     [rdi], rax
        mov     rax, [rbp + P_LEN]
        mov     [rdi + 8], eax
        mov     word ptr [rdi + 12], 2
        mov     word ptr [rdi + 14], 0
        lea     rsi, [r12 + 0x1000]
        mov     eax, ecx
        and     eax, 7
        mov     [rsi + 4 + rax * 2], ax
        lea     eax, [rcx + 1]
        mov     [rsi + 2], ax
        mov     dword ptr [rbx + R_QUEUE_NOTIFY], 0
        lea     rsi, [r12 + 0x2000]
        lea     edx, [rcx + 1]
2:
        movzx   eax, word ptr [rsi + 2]
        cmp     ax, dx
        je      4f
        pause
        jmp     2b
4:
        inc     rcx
        jmp     1b

        /* 3. power off */
3:
        mov     rdx, [rbp + P_POWEROFF_PORT]
        mov     rax, [rbp + P_POWEROFF_VALUE]
        out     dx, al
5:
        hlt
        jmp     5b
