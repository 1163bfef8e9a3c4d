import pc from "picocolors";

/** greet formats a coloured greeting; colours are off when NO_COLOR is set. */
export function greet(name: string): string {
  return `${pc.green("hello")}, ${pc.bold(name)}, built in a cleanroom`;
}
