'use strict';
// The addon (build/Release/ffx_blas.node, built by `npm install`). Loading it throws when it
// was not built (no C compiler) or no CBLAS library loads; ffx then runs its products on wasm.
module.exports = require('./build/Release/ffx_blas.node');
