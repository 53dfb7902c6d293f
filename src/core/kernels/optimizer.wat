;; Fused optimizer updates over tensors that live in the tfjs wasm backend's own memory.
;;
;; The module imports that memory (scripts/build-kernels.mjs emits one build for the plain heap
;; and one for the threaded backend's shared heap) and updates parameters, gradients and
;; optimizer slots in place, 4 floats per instruction: one pass over memory instead of the dozen
;; that a chain of tfjs ops takes, and ~3x faster than the same loop in JS.
;;
;; Pointers are byte offsets into the heap; n counts floats and must be a multiple of 4 (the
;; caller does the remainder). Per element, with g' = g + l2 * p:
;;   adam: m = b1 m + b1c g';  v = b2 v + b2c g'^2;  p = p shrink - step m / (sqrt(v) + eps)
;;   sgd:  m = mu m + g';  p = p - lr m
;; Every scalar comes from the caller (optimizer.ts, updateScalars), which uses the same ones
;; for its JS loop and its tfjs-ops path: all three compute the same float32 numbers.
;;
;; Flush to zero: g' under tiny_g and slots under tiny_s become 0 (NaN passes); the thresholds
;; are parameters, splatted once per call, and their values live in optimizer.ts (FLUSH_GRAD,
;; FLUSH_SLOT, and why those). wasm has no FTZ mode, and x86 takes a ~100-cycle microcode
;; assist for every subnormal operand or result. A slot whose gradient stays 0 (a unit every
;; row of a batch saturates) decays geometrically through the subnormals for hundreds of steps;
;; late in a run most of m sat there and the update ran several times slower.
(module
  (import "env" "memory" (memory 1 MEMORY_LIMITS))

  ;; x with the lanes where |x| < tiny set to 0 (NaN compares false and passes).
  (func $flush (param $x v128) (param $tiny v128) (result v128)
    (v128.andnot (local.get $x) (f32x4.lt (f32x4.abs (local.get $x)) (local.get $tiny))))

  (func (export "adam")
    (param $p i32) (param $g i32) (param $m i32) (param $v i32) (param $n i32)
    (param $b1 f32) (param $b1c f32) (param $b2 f32) (param $b2c f32)
    (param $step f32) (param $eps f32) (param $l2 f32) (param $shrink f32)
    (param $tiny_g f32) (param $tiny_s f32)
    (local $i i32) (local $end i32)
    (local $vb1 v128) (local $vb1c v128) (local $vb2 v128) (local $vb2c v128)
    (local $vstep v128) (local $veps v128) (local $vl2 v128) (local $vshrink v128)
    (local $pi v128) (local $gi v128) (local $mi v128) (local $vi v128)
    (local $vtiny_g v128) (local $vtiny_s v128)
    (local.set $vtiny_g (f32x4.splat (local.get $tiny_g)))
    (local.set $vtiny_s (f32x4.splat (local.get $tiny_s)))
    (local.set $vb1 (f32x4.splat (local.get $b1)))
    (local.set $vb1c (f32x4.splat (local.get $b1c)))
    (local.set $vb2 (f32x4.splat (local.get $b2)))
    (local.set $vb2c (f32x4.splat (local.get $b2c)))
    (local.set $vstep (f32x4.splat (local.get $step)))
    (local.set $veps (f32x4.splat (local.get $eps)))
    (local.set $vl2 (f32x4.splat (local.get $l2)))
    (local.set $vshrink (f32x4.splat (local.get $shrink)))
    (local.set $end (i32.shl (local.get $n) (i32.const 2)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
        (local.set $pi (v128.load align=4 (i32.add (local.get $p) (local.get $i))))
        (local.set $gi
          (call $flush
            (f32x4.add
              (v128.load align=4 (i32.add (local.get $g) (local.get $i)))
              (f32x4.mul (local.get $vl2) (local.get $pi)))
            (local.get $vtiny_g)))
        (local.set $mi
          (call $flush
            (f32x4.add
              (f32x4.mul (local.get $vb1) (v128.load align=4 (i32.add (local.get $m) (local.get $i))))
              (f32x4.mul (local.get $vb1c) (local.get $gi)))
            (local.get $vtiny_s)))
        (local.set $vi
          (call $flush
            (f32x4.add
              (f32x4.mul (local.get $vb2) (v128.load align=4 (i32.add (local.get $v) (local.get $i))))
              (f32x4.mul (local.get $vb2c) (f32x4.mul (local.get $gi) (local.get $gi))))
            (local.get $vtiny_s)))
        (v128.store align=4 (i32.add (local.get $m) (local.get $i)) (local.get $mi))
        (v128.store align=4 (i32.add (local.get $v) (local.get $i)) (local.get $vi))
        (v128.store align=4 (i32.add (local.get $p) (local.get $i))
          (f32x4.sub
            (f32x4.mul (local.get $pi) (local.get $vshrink))
            (f32x4.div
              (f32x4.mul (local.get $vstep) (local.get $mi))
              (f32x4.add (f32x4.sqrt (local.get $vi)) (local.get $veps)))))
        (local.set $i (i32.add (local.get $i) (i32.const 16)))
        (br $next))))

  (func (export "sgd")
    (param $p i32) (param $g i32) (param $m i32) (param $n i32)
    (param $mu f32) (param $lr f32) (param $l2 f32) (param $tiny_g f32) (param $tiny_s f32)
    (local $i i32) (local $end i32)
    (local $vmu v128) (local $vlr v128) (local $vl2 v128) (local $pi v128) (local $mi v128)
    (local $vtiny_g v128) (local $vtiny_s v128)
    (local.set $vtiny_g (f32x4.splat (local.get $tiny_g)))
    (local.set $vtiny_s (f32x4.splat (local.get $tiny_s)))
    (local.set $vmu (f32x4.splat (local.get $mu)))
    (local.set $vlr (f32x4.splat (local.get $lr)))
    (local.set $vl2 (f32x4.splat (local.get $l2)))
    (local.set $end (i32.shl (local.get $n) (i32.const 2)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
        (local.set $pi (v128.load align=4 (i32.add (local.get $p) (local.get $i))))
        (local.set $mi
          (call $flush
            (f32x4.add
              (f32x4.mul (local.get $vmu) (v128.load align=4 (i32.add (local.get $m) (local.get $i))))
              (call $flush
                (f32x4.add
                  (v128.load align=4 (i32.add (local.get $g) (local.get $i)))
                  (f32x4.mul (local.get $vl2) (local.get $pi)))
                (local.get $vtiny_g)))
            (local.get $vtiny_s)))
        (v128.store align=4 (i32.add (local.get $m) (local.get $i)) (local.get $mi))
        (v128.store align=4 (i32.add (local.get $p) (local.get $i))
          (f32x4.sub (local.get $pi) (f32x4.mul (local.get $vlr) (local.get $mi))))
        (local.set $i (i32.add (local.get $i) (i32.const 16)))
        (br $next))))
)
