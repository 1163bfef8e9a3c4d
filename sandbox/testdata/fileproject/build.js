const fs = require("fs");
const greet = require("greet");
fs.mkdirSync("dist", { recursive: true });
fs.writeFileSync("dist/out.txt", greet("cleanroom") + "\n");
console.log("built dist/out.txt");
