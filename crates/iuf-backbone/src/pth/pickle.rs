//! The pickle virtual machine (protocols 0-5, without the extension registry and out-of-band
//! buffers), as far as PyTorch checkpoints need it: the values it builds, a bounds-checked reader
//! over the bytes, and the machine itself (stack, marks, memo) with one method per family of
//! opcodes. It knows nothing of PyTorch: persistent ids and calls of globals are left to the
//! layer above through [`Callbacks`], whose own objects the values carry as [`Value::Extern`].

use std::collections::HashMap;
use std::fmt;

use crate::error::{Error, Result};

/// A Python object as far as checkpoints need it; `E`: the objects of the layer above (see
/// [`Callbacks`]).
#[derive(Clone, PartialEq)]
pub(super) enum Value<E> {
    None,
    Bool(bool),
    Int(i128),
    /// An integer too large for i128 (kept opaque).
    BigInt,
    Float(f64),
    Str(String),
    Bytes(usize),
    Tuple(Vec<Value<E>>),
    List(Vec<Value<E>>),
    Dict(Vec<(Value<E>, Value<E>)>),
    /// `module.name` of a class or function.
    Global(String, String),
    /// An instance of anything else: its constructor, arguments and `__setstate__` state.
    Object {
        callable: Box<Value<E>>,
        args: Box<Value<E>>,
        state: Option<Box<Value<E>>>,
    },
    /// An object of the layer above, made by [`Callbacks::persistent_load`] or [`Callbacks::call`].
    Extern(E),
}

/// As derived, except that an [`Value::Extern`] shows as its object alone.
impl<E: fmt::Debug> fmt::Debug for Value<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Bool(b) => f.debug_tuple("Bool").field(b).finish(),
            Self::Int(i) => f.debug_tuple("Int").field(i).finish(),
            Self::BigInt => f.write_str("BigInt"),
            Self::Float(x) => f.debug_tuple("Float").field(x).finish(),
            Self::Str(s) => f.debug_tuple("Str").field(s).finish(),
            Self::Bytes(n) => f.debug_tuple("Bytes").field(n).finish(),
            Self::Tuple(items) => f.debug_tuple("Tuple").field(items).finish(),
            Self::List(items) => f.debug_tuple("List").field(items).finish(),
            Self::Dict(items) => f.debug_tuple("Dict").field(items).finish(),
            Self::Global(module, name) => {
                f.debug_tuple("Global").field(module).field(name).finish()
            }
            Self::Object {
                callable,
                args,
                state,
            } => f
                .debug_struct("Object")
                .field("callable", callable)
                .field("args", args)
                .field("state", state)
                .finish(),
            Self::Extern(e) => e.fmt(f),
        }
    }
}

impl<E: fmt::Debug> Value<E> {
    /// A short description for error messages.
    pub(super) fn describe(&self) -> String {
        let s = format!("{self:?}");
        if s.chars().count() > 120 {
            format!("{}...", s.chars().take(117).collect::<String>())
        } else {
            s
        }
    }
}

/// Bounds-checked reader over the checkpoint bytes.
pub(super) struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let left = self.data.len() - self.pos;
        if n > left {
            return Err(Error::Checkpoint(format!(
                "truncated: needed {n} bytes at offset {}, only {left} left",
                self.pos
            )));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    /// The next `N` bytes, for a number's `from_le_bytes` (or `from_be_bytes`).
    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut bytes = [0; N];
        bytes.copy_from_slice(self.take(N)?);
        Ok(bytes)
    }

    /// Up to and excluding the next `\n`.
    fn line(&mut self) -> Result<&'a [u8]> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| {
            Error::Checkpoint(format!(
                "truncated: unterminated text line at offset {}",
                self.pos
            ))
        })?;
        self.pos += end + 1;
        Ok(&rest[..end])
    }
}

fn text(bytes: &[u8], what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Error::Checkpoint(format!("{what} is not valid UTF-8")))
}

/// The decimal memo index of the text opcodes PUT and GET.
fn decimal_id(cur: &mut Cursor<'_>, what: &str) -> Result<u32> {
    text(cur.line()?, what)?
        .trim()
        .parse()
        .map_err(|_| Error::Checkpoint(format!("corrupt pickle: bad {what}")))
}

/// Little-endian two's-complement integer of LONG1/LONG4.
fn le_signed<E>(bytes: &[u8]) -> Value<E> {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() > 16 {
        return Value::BigInt;
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut buf = [if negative { 0xff } else { 0 }; 16];
    buf[..bytes.len()].copy_from_slice(bytes);
    Value::Int(i128::from_le_bytes(buf))
}

/// What the machine leaves to the layer above: the objects named by persistent ids, and the calls
/// of globals.
pub(super) trait Callbacks {
    /// The layer's own objects, carried in [`Value::Extern`].
    type Extern: Clone + fmt::Debug;

    /// The object of a binary persistent id (BINPERSID).
    fn persistent_load(&mut self, pid: Value<Self::Extern>) -> Result<Value<Self::Extern>>;

    /// `callable(*args)` (REDUCE, NEWOBJ, NEWOBJ_EX: the keyword arguments are dropped).
    fn call(
        &mut self,
        callable: Value<Self::Extern>,
        args: Value<Self::Extern>,
    ) -> Result<Value<Self::Extern>>;
}

/// The pickle virtual machine, calling out to `callbacks` for persistent ids and calls.
pub(super) struct Unpickler<'c, C: Callbacks> {
    stack: Vec<Value<C::Extern>>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value<C::Extern>>,
    callbacks: &'c mut C,
}

impl<'c, C: Callbacks> Unpickler<'c, C> {
    pub(super) fn new(callbacks: &'c mut C) -> Self {
        Self {
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            callbacks,
        }
    }

    /// Runs the machine to STOP and returns the result.
    pub(super) fn load(mut self, cur: &mut Cursor<'_>) -> Result<Value<C::Extern>> {
        loop {
            let at = cur.pos;
            let op = cur.u8()?;
            if op == b'.' {
                return self.pop(); // STOP
            }
            let known = self.control(op, cur)?
                || self.scalar(op, at, cur)?
                || self.string(op, cur)?
                || self.container(op)?
                || self.object(op, cur)?
                || self.memo(op, cur)?;
            if !known {
                return Err(Error::Checkpoint(format!(
                    "unsupported or corrupt pickle opcode 0x{op:02x} at offset {at}"
                )));
            }
        }
    }

    // Each family of opcodes below runs `op` and returns true, or returns false (having read
    // nothing) when `op` is not one of its own.

    /// PROTO, FRAME and the stack's own opcodes: MARK, POP, POP_MARK, DUP.
    fn control(&mut self, op: u8, cur: &mut Cursor<'_>) -> Result<bool> {
        match op {
            0x80 => {
                cur.u8()?; // PROTO
            }
            0x95 => {
                cur.take(8)?; // FRAME: a length hint
            }
            b'(' => self.marks.push(self.stack.len()),
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let v = self.top()?.clone();
                self.stack.push(v);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// None, booleans, integers and floats (`at`: the opcode's offset, for errors).
    fn scalar(&mut self, op: u8, at: usize, cur: &mut Cursor<'_>) -> Result<bool> {
        let v = match op {
            b'N' => Value::None,
            0x88 => Value::Bool(true),
            0x89 => Value::Bool(false),
            b'I' => match cur.line()? {
                b"00" => Value::Bool(false),
                b"01" => Value::Bool(true),
                digits => Value::Int(text(digits, "INT")?.trim().parse().map_err(|_| {
                    Error::Checkpoint(format!("corrupt pickle: bad INT at offset {at}"))
                })?),
            },
            b'L' => {
                let line = text(cur.line()?, "LONG")?;
                let digits = line.trim().trim_end_matches('L');
                digits.parse().map(Value::Int).unwrap_or(Value::BigInt)
            }
            b'J' => Value::Int(i32::from_le_bytes(cur.array()?).into()),
            b'K' => Value::Int(cur.u8()?.into()),
            b'M' => Value::Int(u16::from_le_bytes(cur.array()?).into()),
            0x8a => {
                let n = cur.u8()? as usize;
                le_signed(cur.take(n)?)
            }
            0x8b => {
                let n = i32::from_le_bytes(cur.array()?);
                let n = usize::try_from(n).map_err(|_| {
                    Error::Checkpoint(format!("corrupt pickle: LONG4 of length {n}"))
                })?;
                le_signed(cur.take(n)?)
            }
            b'F' => {
                let line = text(cur.line()?, "FLOAT")?;
                Value::Float(line.trim().parse().unwrap_or(f64::NAN))
            }
            b'G' => Value::Float(f64::from_be_bytes(cur.array()?)),
            _ => return Ok(false),
        };
        self.stack.push(v);
        Ok(true)
    }

    /// Text strings (unicode, and the Python 2 byte strings that name tensors in old checkpoints)
    /// and byte strings (kept as their length only): a length, then that many bytes.
    fn string(&mut self, op: u8, cur: &mut Cursor<'_>) -> Result<bool> {
        let n = match op {
            0x8c | b'U' | b'C' => cur.u8()? as usize,
            b'X' | b'B' => u32::from_le_bytes(cur.array()?) as usize,
            0x8d | 0x8e | 0x96 => {
                usize::try_from(u64::from_le_bytes(cur.array()?)).unwrap_or(usize::MAX)
            }
            b'T' => usize::try_from(i32::from_le_bytes(cur.array()?))
                .map_err(|_| Error::Checkpoint("corrupt pickle: negative BINSTRING".into()))?,
            b'V' => {
                // Protocol 0 unicode, up to the end of the line: raw-unicode-escape; checkpoints
                // only use ASCII names.
                let s = text(cur.line()?, "string")?;
                self.stack.push(Value::Str(s));
                return Ok(true);
            }
            _ => return Ok(false),
        };
        let bytes = cur.take(n)?;
        let v = match op {
            b'X' | 0x8c | 0x8d => Value::Str(text(bytes, "string")?),
            b'T' | b'U' => Value::Str(String::from_utf8_lossy(bytes).into_owned()),
            _ => Value::Bytes(n),
        };
        self.stack.push(v);
        Ok(true)
    }

    /// Tuples, lists, dicts, and sets (kept as lists: they never hold tensors in checkpoints).
    fn container(&mut self, op: u8) -> Result<bool> {
        match op {
            b')' => self.stack.push(Value::Tuple(Vec::new())),
            b't' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if self.stack.len() < n {
                    return Err(Error::Checkpoint("corrupt pickle: stack underflow".into()));
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.stack.push(Value::Tuple(items));
            }
            // EMPTY_LIST, EMPTY_SET.
            b']' | 0x8f => self.stack.push(Value::List(Vec::new())),
            // LIST, FROZENSET.
            b'l' | 0x91 => {
                let items = self.pop_mark()?;
                self.stack.push(Value::List(items));
            }
            b'a' => {
                let v = self.pop()?;
                self.append(vec![v])?;
            }
            // APPENDS, ADDITEMS.
            b'e' | 0x90 => {
                let items = self.pop_mark()?;
                self.append(items)?;
            }
            b'}' => self.stack.push(Value::Dict(Vec::new())),
            b'd' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::Dict(Vec::new()));
                self.set_items(items)?;
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.set_items(vec![k, v])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.set_items(items)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Globals, calls (REDUCE, NEWOBJ, NEWOBJ_EX), BUILD and persistent ids.
    fn object(&mut self, op: u8, cur: &mut Cursor<'_>) -> Result<bool> {
        match op {
            b'c' => {
                let module = text(cur.line()?, "GLOBAL module")?;
                let name = text(cur.line()?, "GLOBAL name")?;
                self.stack.push(Value::Global(module, name));
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(m), Value::Str(n)) = (module, name) else {
                    return Err(Error::Checkpoint(
                        "corrupt pickle: STACK_GLOBAL needs two strings".into(),
                    ));
                };
                self.stack.push(Value::Global(m, n));
            }
            b'R' | 0x81 | 0x92 => {
                if op == 0x92 {
                    self.pop()?; // NEWOBJ_EX's keyword arguments
                }
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = self.callbacks.call(callable, args)?;
                self.stack.push(v);
            }
            b'b' => {
                let state = self.pop()?;
                // An OrderedDict's attributes (`_metadata`) and a tensor's Python state are not
                // needed.
                if let Value::Object { state: slot, .. } = self.top()? {
                    *slot = Some(Box::new(state));
                }
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = self.callbacks.persistent_load(pid)?;
                self.stack.push(v);
            }
            b'P' => {
                let pid = text(cur.line()?, "PERSID")?;
                return Err(Error::Checkpoint(format!(
                    "unsupported text persistent id `{pid}`"
                )));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The memo: PUT, BINPUT, LONG_BINPUT and MEMOIZE store the top of the stack, GET, BINGET
    /// and LONG_BINGET push a stored value.
    fn memo(&mut self, op: u8, cur: &mut Cursor<'_>) -> Result<bool> {
        let id = match op {
            b'p' => decimal_id(cur, "PUT")?,
            b'g' => decimal_id(cur, "GET")?,
            b'q' | b'h' => cur.u8()?.into(),
            b'r' | b'j' => u32::from_le_bytes(cur.array()?),
            0x94 => self.memo.len() as u32,
            _ => return Ok(false),
        };
        if matches!(op, b'p' | b'q' | b'r' | 0x94) {
            let v = self.top()?.clone();
            self.memo.insert(id, v);
        } else {
            let v = self.memo.get(&id).cloned().ok_or_else(|| {
                Error::Checkpoint(format!("corrupt pickle: memo entry {id} missing"))
            })?;
            self.stack.push(v);
        }
        Ok(true)
    }

    fn pop(&mut self) -> Result<Value<C::Extern>> {
        self.stack
            .pop()
            .ok_or_else(|| Error::Checkpoint("corrupt pickle: stack underflow".into()))
    }

    fn top(&mut self) -> Result<&mut Value<C::Extern>> {
        self.stack
            .last_mut()
            .ok_or_else(|| Error::Checkpoint("corrupt pickle: stack underflow".into()))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value<C::Extern>>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| Error::Checkpoint("corrupt pickle: no MARK".into()))?;
        if mark > self.stack.len() {
            return Err(Error::Checkpoint("corrupt pickle: MARK above stack".into()));
        }
        Ok(self.stack.split_off(mark))
    }

    fn set_items(&mut self, items: Vec<Value<C::Extern>>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return Err(Error::Checkpoint("corrupt pickle: odd SETITEMS".into()));
        }
        match self.top()? {
            Value::Dict(d) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
                Ok(())
            }
            // Items set on an opaque object (a dict subclass): not needed for tensors.
            Value::Object { .. } => Ok(()),
            other => Err(Error::Checkpoint(format!(
                "corrupt pickle: SETITEM on {}",
                other.describe()
            ))),
        }
    }

    fn append(&mut self, items: Vec<Value<C::Extern>>) -> Result<()> {
        match self.top()? {
            Value::List(l) => {
                l.extend(items);
                Ok(())
            }
            Value::Object { .. } => Ok(()),
            other => Err(Error::Checkpoint(format!(
                "corrupt pickle: APPEND on {}",
                other.describe()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Callbacks without a layer above: no persistent ids, every call an opaque object.
    struct Plain;

    impl Callbacks for Plain {
        type Extern = ();

        fn persistent_load(&mut self, pid: Value<()>) -> Result<Value<()>> {
            Err(Error::Checkpoint(format!(
                "persistent id {}",
                pid.describe()
            )))
        }

        fn call(&mut self, callable: Value<()>, args: Value<()>) -> Result<Value<()>> {
            Ok(Value::Object {
                callable: Box::new(callable),
                args: Box::new(args),
                state: None,
            })
        }
    }

    #[test]
    fn long1_decodes_a_ten_byte_integer() {
        // LONG1 of the legacy checkpoints' magic number as pickle writes it (10 little-endian
        // bytes).
        let magic: i128 = 0x1950a86a20f9469cfc6c;
        let bytes = magic.to_le_bytes();
        assert_eq!(le_signed::<()>(&bytes[..10]), Value::Int(magic));
        assert_eq!(le_signed::<()>(&[0xff]), Value::Int(-1));
        assert_eq!(le_signed::<()>(&[0xe9, 0x03]), Value::Int(1001));
    }

    #[test]
    fn interprets_a_hand_written_pickle() {
        // {'a': [1, 2.5, True], 'b': ('x', None)} at protocol 2, written opcode by opcode.
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        p.extend(b"X\x01\x00\x00\x00a");
        p.extend([b']', b'q', 1, b'(', b'K', 1, b'G']);
        p.extend(2.5f64.to_be_bytes());
        p.extend([0x88, b'e']);
        p.extend(b"X\x01\x00\x00\x00b");
        p.extend(b"X\x01\x00\x00\x00x");
        p.extend([b'N', 0x86, b'u', b'.']);
        let v = Unpickler::new(&mut Plain)
            .load(&mut Cursor::new(&p))
            .unwrap();
        assert_eq!(
            v,
            Value::Dict(vec![
                (
                    Value::Str("a".into()),
                    Value::List(vec![Value::Int(1), Value::Float(2.5), Value::Bool(true)])
                ),
                (
                    Value::Str("b".into()),
                    Value::Tuple(vec![Value::Str("x".into()), Value::None])
                ),
            ])
        );
        // Every strict prefix is a clean error, never a panic.
        for n in 0..p.len() {
            assert!(Unpickler::new(&mut Plain)
                .load(&mut Cursor::new(&p[..n]))
                .is_err());
        }
    }
}
