import { posix } from "node:path";

/**
 * Normalises an absolute path lexically: `.` and `..` resolved, repeated and
 * trailing slashes dropped. `/srv/app/../etc` becomes `/srv/etc`.
 *
 * @param path An absolute POSIX path.
 * @returns The normalised path (`/` for the root).
 */
export function normalizeRoot(path: string): string {
  const normal = posix.normalize(path);
  return normal.length > 1 && normal.endsWith("/") ? normal.slice(0, -1) : normal;
}

/**
 * Whether `path` lies inside `root`, compared by whole path segments after
 * normalisation: `/srv/app` holds `/srv/app/x`, never `/srv/application` nor
 * `/srv/app/../etc`. A relative path, or one with a NUL byte, is inside nothing.
 *
 * @param path The path to check.
 * @param root A normalised absolute root.
 * @returns `true` when the path is the root or below it.
 */
export function isInsideRoot(path: string, root: string): boolean {
  if (!path.startsWith("/") || path.includes("\0")) return false;
  const normal = normalizeRoot(path);
  if (root === "/") return true;
  return normal === root || normal.startsWith(`${root}/`);
}
