{
  "targets": [
    {
      "target_name": "ffx_blas",
      "sources": ["src/ffx_blas.c", "src/ffx_conv.c"],
      "cflags": ["-O3", "-std=c11", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-Wall", "-Wextra"],
      "defines": ["_GNU_SOURCE"],
      "libraries": ["-ldl", "-lpthread", "-lm"]
    }
  ]
}
