'use strict';
// The harmless-looking API that makes people install this package.
module.exports = function track(event) {
  return { event: String(event), at: Date.now() };
};
