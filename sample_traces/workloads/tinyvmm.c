/*
 * tinyvmm: a tiny VMM that drives /dev/kvm to exercise the KVM MMU for kvm-mmu-replay's
 * sample traces.
 *
 * The parent forks one process per VM. Each VM has vCPU threads named like QEMU's
 * ("CPU n/KVM"), two memslots at the same guest-physical addresses in every VM, and runs a
 * timeline while its vCPUs execute: memslot add, KVM_SET_SREGS resets (CR3 switch between
 * two page-table roots, CR0.WP flips), dirty logging on/off, memslot delete, memslot move
 * and move back, MADV_DONTNEED, a vCPU hot-add, then one of three teardowns (orderly;
 * _exit() while vCPUs are inside KVM_RUN; VM fd closed first).
 *
 * Guest code runs in 64-bit mode at CPL3 on the host's user selectors (CS 0x33, SS 0x2b):
 * on a kvm_pvm host only CPL3 code runs natively (CPL0 code would be emulated), and it runs
 * the same way on VMX/SVM hosts. The guest writes one qword per 4 KiB page of its share of
 * slot 1, rewrites one of its own PTEs (write-protected guest page table: unsync/sync),
 * writes slot 2, then signals "iteration done" with an MMIO write to an unbacked GPA.
 *
 * Usage: tinyvmm [-v VMS] [-c VCPUS] [-p PAGES] [-s SCALE_MS] [-t TIMEOUT_S]
 * (-p: 4 KiB pages each vCPU writes per iteration, at most 256; fewer pages, smaller traces)
 * Exit status: 0 when every VM process ran its timeline, 1 otherwise (the log says why).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SLOT0_GPA 0x100000ULL   /* page tables + code, 2 MiB */
#define SLOT0_SIZE 0x200000ULL
#define SLOT1_GPA 0x1000000ULL  /* data, 8 MiB, mapped by 4 KiB guest PTEs */
#define SLOT1_SIZE 0x800000ULL
#define SLOT1_MOVED 0x4000000ULL
#define SLOT2_GPA 0x8000000ULL  /* added and deleted while vCPUs run, 1 MiB */
#define SLOT2_SIZE 0x100000ULL
#define MMIO_DONE 0xd0000000ULL /* unbacked: a write here ends one guest iteration */
#define CODE_OFF 0x10000ULL
#define STACK_OFF 0x80000ULL
#define MAX_VCPUS 8

/* Guest code, position independent. In: rdi = share base, rsi = pages, rdx = PTE address,
 * rcx = spin count, r12 = vCPU index * 64. r10 counts iterations. */
extern const uint8_t guest_code_start[], guest_code_end[];
__asm__(".pushsection .rodata\n"
        ".globl guest_code_start\n.globl guest_code_end\n"
        "guest_code_start:\n"
        "  xor %r10, %r10\n"
        "1: mov %rdi, %r8\n"
        "  mov %rsi, %r9\n"
        "2: mov %r10, (%r8)\n"
        "  add $4096, %r8\n"
        "  dec %r9\n"
        "  jnz 2b\n"
        "  mov (%rdx), %rax\n"
        "  mov %rax, (%rdx)\n"
        "  movabs $0x8000000, %r11\n"
        "  mov %r10, (%r11,%r12)\n"
        "  mov %rcx, %r13\n"
        "3: dec %r13\n"
        "  jnz 3b\n"
        "  inc %r10\n"
        "  movabs $0xd0000000, %rbx\n"
        "  mov %r10, (%rbx)\n"
        "  jmp 1b\n"
        "guest_code_end:\n"
        ".popsection\n");

struct vcpu {
    struct vm *vm;
    int index, fd;
    struct kvm_run *run;
    pthread_t thread;
    atomic_int reset_req; /* 1: switch CR3, 2: flip CR0.WP */
    unsigned long iters, mmio_data, pio, other;
};

struct vm {
    int index, kvm_fd, fd, nvcpus, run_size;
    uint8_t *mem0, *mem1, *mem2;
    struct vcpu vcpus[MAX_VCPUS];
    atomic_int stop;
    int scale_ms, pages;
};

static struct timespec t_start;

static void logf_(const char *who, const char *fmt, ...)
{
    char buf[512];
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int n = snprintf(buf, sizeof buf, "[%ld.%06ld %s] ", (long)now.tv_sec, now.tv_nsec / 1000, who);
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    (void)!write(STDOUT_FILENO, buf, (size_t)n); /* one write per line: no interleaving */
}

#define VLOG(vm, ...) do { char w_[16]; snprintf(w_, sizeof w_, "vm%d", (vm)->index); logf_(w_, __VA_ARGS__); } while (0)

static void die(struct vm *vm, const char *what)
{
    VLOG(vm, "error: %s: %s", what, strerror(errno));
    _exit(1);
}

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) && errno == EINTR)
        ;
}

static void set_slot(struct vm *vm, uint32_t slot, uint64_t gpa, uint64_t size, void *hva, uint32_t flags)
{
    struct kvm_userspace_memory_region r = {
        .slot = slot, .flags = flags, .guest_phys_addr = gpa, .memory_size = size,
        .userspace_addr = (uint64_t)(uintptr_t)hva,
    };
    if (ioctl(vm->fd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
        die(vm, "KVM_SET_USER_MEMORY_REGION");
    VLOG(vm, "memslot %u -> gpa %#llx size %#llx flags %#x", slot, (unsigned long long)gpa,
         (unsigned long long)size, flags);
}

/* Identity-mapped, user-accessible page tables in slot 0: PML4 A at +0, PML4 B at +0x8000
 * (same PDPT), PD for 0-1 GiB at +0x2000 with 2 MiB pages except slot 1 (4 KiB PTEs at
 * +0x4000..+0x7fff), PD for 3-4 GiB (MMIO) at +0x3000. */
static void build_page_tables(uint8_t *mem0)
{
    uint64_t *pml4a = (uint64_t *)mem0, *pml4b = (uint64_t *)(mem0 + 0x8000);
    uint64_t *pdpt = (uint64_t *)(mem0 + 0x1000), *pd = (uint64_t *)(mem0 + 0x2000);
    uint64_t *pd3 = (uint64_t *)(mem0 + 0x3000), *pt = (uint64_t *)(mem0 + 0x4000);
    pml4a[0] = pml4b[0] = (SLOT0_GPA + 0x1000) | 7;
    pdpt[0] = (SLOT0_GPA + 0x2000) | 7;
    pdpt[3] = (SLOT0_GPA + 0x3000) | 7;
    for (uint64_t i = 0; i < 512; i++) {
        pd[i] = (i << 21) | 0x87;
        pd3[i] = (0xc0000000ULL + (i << 21)) | 0x87;
    }
    for (uint64_t i = 0; i < SLOT1_SIZE / 4096; i++)
        pt[i] = (SLOT1_GPA + i * 4096) | 7;
    for (uint64_t i = 0; i < SLOT1_SIZE >> 21; i++)
        pd[(SLOT1_GPA >> 21) + i] = (SLOT0_GPA + 0x4000 + i * 4096) | 7;
    memcpy(mem0 + CODE_OFF, guest_code_start, (size_t)(guest_code_end - guest_code_start));
}

static void set_sregs(struct vcpu *v, uint64_t cr3, int wp)
{
    struct kvm_sregs s;
    if (ioctl(v->fd, KVM_GET_SREGS, &s) < 0)
        die(v->vm, "KVM_GET_SREGS");
    struct kvm_segment cs = { .base = 0, .limit = 0xffffffff, .selector = 0x33, .type = 11,
                              .present = 1, .dpl = 3, .s = 1, .l = 1, .g = 1 };
    struct kvm_segment ds = { .base = 0, .limit = 0xffffffff, .selector = 0x2b, .type = 3,
                              .present = 1, .dpl = 3, .db = 1, .s = 1, .g = 1 };
    s.cs = cs;
    s.ss = s.ds = s.es = s.fs = s.gs = ds;
    s.cr3 = cr3;
    s.cr4 = 0x20; /* PAE */
    s.cr0 = 0x80000033ULL | (wp ? 0x10000ULL : 0);
    s.efer = 0xd00; /* LME | LMA | NX */
    if (ioctl(v->fd, KVM_SET_SREGS, &s) < 0)
        die(v->vm, "KVM_SET_SREGS");
}

static void set_regs(struct vcpu *v)
{
    uint64_t share = SLOT1_SIZE / MAX_VCPUS;
    struct kvm_regs r = { 0 };
    r.rip = SLOT0_GPA + CODE_OFF;
    r.rsp = SLOT0_GPA + STACK_OFF + (uint64_t)v->index * 0x1000;
    r.rflags = 0x2;
    r.rdi = SLOT1_GPA + (uint64_t)v->index * share;
    r.rsi = (uint64_t)v->vm->pages;
    r.rdx = SLOT0_GPA + 0x4000 + (uint64_t)v->index * (share / 4096) * 8; /* PTE of its first page */
    r.rcx = 200000; /* spin between MMIO exits: fewer exits, smaller traces */
    r.r12 = (uint64_t)v->index * 64;
    if (ioctl(v->fd, KVM_SET_REGS, &r) < 0)
        die(v->vm, "KVM_SET_REGS");
}

static void apply_reset(struct vcpu *v, int *cr3_b, int *wp)
{
    int req = atomic_exchange(&v->reset_req, 0);
    if (!req)
        return;
    if (req == 1)
        *cr3_b = !*cr3_b;
    else
        *wp = !*wp;
    set_sregs(v, SLOT0_GPA + (*cr3_b ? 0x8000 : 0), *wp);
}

static void *vcpu_main(void *arg)
{
    struct vcpu *v = arg;
    int cr3_b = 0, wp = 1;
    while (!atomic_load(&v->vm->stop)) {
        apply_reset(v, &cr3_b, &wp);
        if (ioctl(v->fd, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            VLOG(v->vm, "vcpu %d: KVM_RUN: %s", v->index, strerror(errno));
            break;
        }
        switch (v->run->exit_reason) {
        case KVM_EXIT_MMIO:
            if (v->run->mmio.phys_addr == MMIO_DONE)
                v->iters++;
            else
                v->mmio_data++; /* slot 1 moved or slot 2 absent: the GPA is unbacked */
            break;
        case KVM_EXIT_IO:
            v->pio++;
            break;
        case KVM_EXIT_INTR:
            break;
        default:
            v->other++;
            VLOG(v->vm, "vcpu %d: exit reason %u, stopping it", v->index, v->run->exit_reason);
            return NULL;
        }
    }
    return NULL;
}

static void start_vcpu(struct vm *vm, int index)
{
    struct vcpu *v = &vm->vcpus[index];
    v->vm = vm;
    v->index = index;
    v->fd = ioctl(vm->fd, KVM_CREATE_VCPU, index);
    if (v->fd < 0)
        die(vm, "KVM_CREATE_VCPU");
    v->run = mmap(NULL, (size_t)vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
    if (v->run == MAP_FAILED)
        die(vm, "mmap kvm_run");
    set_sregs(v, SLOT0_GPA, 1);
    set_regs(v);
    if (pthread_create(&v->thread, NULL, vcpu_main, v))
        die(vm, "pthread_create");
    char name[16];
    snprintf(name, sizeof name, "CPU %d/KVM", index);
    pthread_setname_np(v->thread, name);
    vm->nvcpus = index + 1;
}

static void *map_anon(struct vm *vm, uint64_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die(vm, "mmap guest memory");
    return p;
}

static void request_resets(struct vm *vm, int kind)
{
    for (int i = 0; i < vm->nvcpus; i++)
        atomic_store(&vm->vcpus[i].reset_req, kind);
    sleep_ms(vm->scale_ms);
}

static void dirty_log_cycle(struct vm *vm)
{
    size_t bitmap_len = SLOT1_SIZE / 4096 / 8;
    uint64_t *bitmap = calloc(1, bitmap_len);
    set_slot(vm, 1, SLOT1_GPA, SLOT1_SIZE, vm->mem1, KVM_MEM_LOG_DIRTY_PAGES);
    for (int round = 0; round < 3; round++) {
        sleep_ms(2 * vm->scale_ms);
        struct kvm_dirty_log log = { .slot = 1, .dirty_bitmap = bitmap };
        if (ioctl(vm->fd, KVM_GET_DIRTY_LOG, &log) < 0)
            die(vm, "KVM_GET_DIRTY_LOG");
        int dirty = 0;
        for (size_t i = 0; i < bitmap_len / 8; i++)
            dirty += __builtin_popcountll(bitmap[i]);
        VLOG(vm, "dirty log slot 1: %d dirty pages", dirty);
    }
    set_slot(vm, 1, SLOT1_GPA, SLOT1_SIZE, vm->mem1, 0);
    free(bitmap);
}

static void report(struct vm *vm)
{
    for (int i = 0; i < vm->nvcpus; i++) {
        struct vcpu *v = &vm->vcpus[i];
        VLOG(vm, "vcpu %d: guest iters %lu data-mmio %lu pio %lu other %lu", i, v->iters,
             v->mmio_data, v->pio, v->other);
    }
}

static void stop_and_join(struct vm *vm)
{
    atomic_store(&vm->stop, 1);
    for (int i = 0; i < vm->nvcpus; i++)
        pthread_join(vm->vcpus[i].thread, NULL);
}

static void teardown(struct vm *vm)
{
    switch (vm->index % 3) {
    case 0:
        VLOG(vm, "teardown: orderly (join vCPU threads, close fds)");
        stop_and_join(vm);
        for (int i = 0; i < vm->nvcpus; i++)
            close(vm->vcpus[i].fd);
        close(vm->fd);
        break;
    case 1:
        VLOG(vm, "teardown: _exit with vCPUs in KVM_RUN");
        _exit(0);
    default:
        VLOG(vm, "teardown: close VM fd while vCPUs run");
        close(vm->fd);
        sleep_ms(vm->scale_ms);
        stop_and_join(vm);
        for (int i = 0; i < vm->nvcpus; i++)
            close(vm->vcpus[i].fd);
        break;
    }
}

static void vm_main(int index, int nvcpus, int pages, int scale_ms)
{
    static struct vm vm; /* one per process */
    vm.index = index;
    vm.scale_ms = scale_ms;
    vm.pages = pages;
    prctl(PR_SET_NAME, "tinyvmm-vm", 0, 0, 0);
    vm.kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (vm.kvm_fd < 0)
        die(&vm, "open /dev/kvm");
    vm.fd = ioctl(vm.kvm_fd, KVM_CREATE_VM, 0);
    if (vm.fd < 0)
        die(&vm, "KVM_CREATE_VM");
    VLOG(&vm, "KVM_CREATE_VM fd %d pid %d", vm.fd, getpid());
    vm.run_size = ioctl(vm.kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    vm.mem0 = map_anon(&vm, SLOT0_SIZE);
    vm.mem1 = map_anon(&vm, SLOT1_SIZE);
    vm.mem2 = map_anon(&vm, SLOT2_SIZE);
    build_page_tables(vm.mem0);
    set_slot(&vm, 0, SLOT0_GPA, SLOT0_SIZE, vm.mem0, 0);
    set_slot(&vm, 1, SLOT1_GPA, SLOT1_SIZE, vm.mem1, 0);
    for (int i = 0; i < nvcpus; i++)
        start_vcpu(&vm, i);
    sleep_ms(4 * scale_ms);
    VLOG(&vm, "boot done, live vcpus %d, guest iters vcpu0 %lu", vm.nvcpus, vm.vcpus[0].iters);
    set_slot(&vm, 2, SLOT2_GPA, SLOT2_SIZE, vm.mem2, 0);
    sleep_ms(2 * scale_ms);
    VLOG(&vm, "KVM_SET_SREGS resets: CR3 switch, CR0.WP flip, CR3 switch back");
    request_resets(&vm, 1);
    request_resets(&vm, 2);
    request_resets(&vm, 1);
    dirty_log_cycle(&vm);
    set_slot(&vm, 2, SLOT2_GPA, 0, vm.mem2, 0); /* delete while vCPUs run */
    sleep_ms(2 * scale_ms);
    set_slot(&vm, 1, SLOT1_MOVED, SLOT1_SIZE, vm.mem1, 0); /* move while vCPUs run */
    sleep_ms(2 * scale_ms);
    set_slot(&vm, 1, SLOT1_GPA, SLOT1_SIZE, vm.mem1, 0); /* and back */
    sleep_ms(2 * scale_ms);
    VLOG(&vm, "MADV_DONTNEED first half of slot 1");
    if (madvise(vm.mem1, SLOT1_SIZE / 2, MADV_DONTNEED))
        die(&vm, "madvise");
    sleep_ms(2 * scale_ms);
    if (index % 3 == 2 && vm.nvcpus < MAX_VCPUS) {
        start_vcpu(&vm, vm.nvcpus);
        VLOG(&vm, "hot-added vcpu %d", vm.nvcpus - 1);
        sleep_ms(2 * scale_ms);
    }
    report(&vm);
    teardown(&vm);
    _exit(0);
}

static int usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [-v VMS] [-c VCPUS (1-%d)] [-p PAGES (1-%llu)] [-s SCALE_MS] [-t TIMEOUT_S]\n",
            argv0, MAX_VCPUS - 1, SLOT1_SIZE / MAX_VCPUS / 4096);
    return 2;
}

int main(int argc, char **argv)
{
    int nvms = 3, nvcpus = 2, pages = 256, scale_ms = 5, timeout_s = 30, opt;
    while ((opt = getopt(argc, argv, "v:c:p:s:t:")) != -1) {
        switch (opt) {
        case 'v': nvms = atoi(optarg); break;
        case 'c': nvcpus = atoi(optarg); break;
        case 'p': pages = atoi(optarg); break;
        case 's': scale_ms = atoi(optarg); break;
        case 't': timeout_s = atoi(optarg); break;
        default: return usage(argv[0]);
        }
    }
    if (nvms < 1 || nvms > 16 || nvcpus < 1 || nvcpus >= MAX_VCPUS || scale_ms < 1 || timeout_s < 1 ||
        pages < 1 || (uint64_t)pages > SLOT1_SIZE / MAX_VCPUS / 4096)
        return usage(argv[0]);
    clock_gettime(CLOCK_MONOTONIC, &t_start);
    logf_("orch", "start: %d VMs x %d vCPUs, %d pages per vCPU, scale %d ms", nvms, nvcpus, pages,
          scale_ms);
    pid_t pids[16];
    for (int i = 0; i < nvms; i++) {
        pids[i] = fork();
        if (pids[i] < 0) {
            perror("fork");
            return 1;
        }
        if (pids[i] == 0) {
            alarm((unsigned)timeout_s); /* a wedged VM process dies instead of hanging */
            vm_main(i, nvcpus, pages, scale_ms);
        }
    }
    int failed = 0;
    for (int i = 0; i < nvms; i++) {
        int status;
        if (waitpid(pids[i], &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status)) {
            logf_("orch", "vm%d (pid %d) failed: status %#x", i, pids[i], status);
            failed = 1;
        }
    }
    logf_("orch", "done rc %d", failed);
    return failed;
}
