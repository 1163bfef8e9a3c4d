module.exports = (n) => `hello, ${n}`;
