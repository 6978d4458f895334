// Tiny DOM helpers: build elements, and write text or attributes only when
// they change (the ladder rewrites hundreds of cells per frame otherwise).

export interface Props {
  readonly class?: string;
  readonly text?: string;
  readonly testid?: string;
  readonly title?: string;
  readonly attrs?: Readonly<Record<string, string>>;
}

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Props = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  if (props.class) element.className = props.class;
  if (props.text !== undefined) element.textContent = props.text;
  if (props.testid) element.dataset.testid = props.testid;
  if (props.title) element.title = props.title;
  for (const [name, value] of Object.entries(props.attrs ?? {})) element.setAttribute(name, value);
  element.append(...children);
  return element;
}

export function setText(element: HTMLElement, text: string): void {
  if (element.textContent !== text) element.textContent = text;
}

/**
 * A text slot: one Text node inside `parent`, rewritten in place. Cheaper
 * than textContent (no child-list change) and it remembers its value.
 */
export class TextSlot {
  private readonly node = document.createTextNode("");

  constructor(parent: HTMLElement) {
    parent.append(this.node);
  }

  set(value: string): void {
    if (this.node.data !== value) this.node.data = value;
  }
}

export function setData(element: HTMLElement, key: string, value: string): void {
  if (element.dataset[key] !== value) element.dataset[key] = value;
}

export function setClass(element: HTMLElement, name: string, on: boolean): void {
  if (element.classList.contains(name) !== on) element.classList.toggle(name, on);
}

/** A bar's length as a transform (no layout): fraction in [0, 1]. */
export function setBar(bar: HTMLElement, fraction: number): void {
  const value = `scaleX(${Math.max(0, Math.min(1, fraction)).toFixed(3)})`;
  if (bar.style.transform !== value) bar.style.transform = value;
}
