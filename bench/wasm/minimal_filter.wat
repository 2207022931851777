;; The smallest proxy-wasm module Envoy 1.30+ loads as an HTTP filter: the ABI version, memory
;; and the allocator the host writes into, and the root context's start and configure. It
;; exports no per-request callback, so Envoy enters it only to create and delete each request's
;; context: its cost against no filter is the floor any wasm filter pays in that Envoy
;; (`./lab bench --only filter`, the "minimal module" row). Hand-written; compiled by the bench
;; with the `wat` crate.
(module
  (memory (export "memory") 1)
  ;; A bump allocator: Envoy asks for room only to pass configuration, a few times per VM.
  (global $next (mut i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $next))
    (global.set $next
      (i32.and (i32.add (i32.add (local.get $at) (local.get $size)) (i32.const 7)) (i32.const -8)))
    ;; Grow the memory when the new end is past it (whole 64 KiB pages, one spare).
    (if (i32.gt_u (global.get $next) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.lt_s
              (memory.grow (i32.add (i32.shr_u (local.get $size) (i32.const 16)) (i32.const 1)))
              (i32.const 0))
          (then (unreachable)))))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32)))
