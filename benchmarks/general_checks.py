"""Everyday questions that check an adapter keeps the model's general ability, of kinds the recipe never trains on.

Written before any tuning and never tuned on. The write recipe's anchors (`templora_memory.probes.ANCHORS`) ask
about astronomy, calendar counts, animals, opposites, seasons, states of water, colours, arithmetic, greetings,
the senses, fruit, capitals and the sun; these ask about eight other kinds — jobs, tools, clothing, vehicles,
shapes, words, places in a town, and food — and `tests/test_recall_split.py` checks that no content word is shared.
Each question carries the answers that count (normalised exact match, any of them).

Two sets, like the recall benchmark's splits: `GENERAL` is the report set (written before any tuning, never tuned
on); `GENERAL_TUNING`, written later for tuning the recipe against forgetting, asks about eight further kinds —
musical instruments, sports and games, rooms and furniture, weather, family, materials, the body, and feelings —
sharing no content word with the anchors and no question with the report set.
"""

from __future__ import annotations

GENERAL = (  # the report set
    # jobs
    ("Who puts out fires?", ("firefighter", "firefighters", "fireman", "firemen")),
    ("Who flies an aeroplane?", ("pilot",)),
    ("Who looks after sick pets?", ("vet", "veterinarian")),
    ("Who teaches children at school?", ("teacher", "teachers")),
    ("Who brings letters to your house?", ("postman", "mail carrier", "postal worker", "mailman")),
    ("Who fixes teeth?", ("dentist",)),
    # tools
    ("What do you use to cut paper?", ("scissors",)),
    ("What do you write on a blackboard with?", ("chalk",)),
    ("What tool do you hit a nail with?", ("hammer",)),
    ("What do you use to unlock a door?", ("key",)),
    ("What do you look at to know the time?", ("clock", "watch")),
    ("What do you sweep the floor with?", ("broom",)),
    # clothing
    ("What do you wear on your hands to keep them warm?", ("gloves", "mittens")),
    ("What do you wear on your head?", ("hat", "cap", "helmet")),
    ("What do you put on your feet before going outside?", ("shoes", "boots", "socks")),
    ("What do short-sighted people wear?", ("glasses", "spectacles")),
    ("What do you wrap around your neck when it is chilly?", ("scarf",)),
    ("What do you wear to bed?", ("pajamas", "pyjamas", "nightgown")),
    # vehicles
    ("Which vehicle runs on rails?", ("train", "tram")),
    ("What has two wheels and pedals?", ("bicycle", "bike")),
    ("What carries people across the sea?", ("boat", "ship", "ferry")),
    ("What takes people from one country to another through the air?", ("plane", "aeroplane", "airplane")),
    ("What big vehicle carries many passengers along city streets?", ("bus",)),
    ("What vehicle takes astronauts into space?", ("rocket", "spaceship", "space shuttle")),
    # shapes
    ("How many sides does a pentagon have?", ("five", "5")),
    ("How many sides does a square have?", ("four", "4")),
    ("What shape is a football?", ("round", "sphere", "ball", "circle")),
    ("What shape has no corners and no straight sides?", ("circle", "oval")),
    ("How many corners does a rectangle have?", ("four", "4")),
    ("What shape is a coin?", ("round", "circle", "disc", "disk")),
    # words
    ("What letter comes after A in the alphabet?", ("b",)),
    ("What is the first letter of 'pencil'?", ("p",)),
    ("How many letters are in 'house'?", ("five", "5")),
    ("What is the plural of 'mouse'?", ("mice",)),
    ("What is the plural of 'child'?", ("children",)),
    ("Which rhymes with 'cat': hat or pen?", ("hat",)),
    # places in a town
    ("Where do you go to borrow books?", ("library",)),
    ("Where do very sick people go to get treated?", ("hospital",)),
    ("Where do you go to buy bread and cakes?", ("bakery", "baker", "shop", "store", "supermarket")),
    ("Where do children go to learn?", ("school",)),
    ("Where do planes take off and land?", ("airport", "runway")),
    ("Where can people watch lions and giraffes in a city?", ("zoo",)),
    # food
    ("What is the meal eaten in the morning called?", ("breakfast",)),
    ("What is bread mainly made from?", ("flour", "wheat")),
    ("In which kitchen appliance do you keep food fresh?", ("fridge", "refrigerator", "freezer")),
    ("What do you spread on toast that is made from cream?", ("butter",)),
    ("What snack is made by heating corn kernels until they burst?", ("popcorn",)),
    ("What do you pour on pancakes that comes from maple trees?", ("syrup", "maple syrup")),
)

GENERAL_TUNING = (
    # musical instruments
    ("Which instrument has many keys and pedals and stands in concert halls?", ("piano", "keyboard", "organ")),
    ("Which instrument has six strings and is strummed?", ("guitar",)),
    ("What instrument do you play by hitting it with sticks?", ("drum", "drums", "xylophone")),
    ("Which instrument with strings is held under the chin and played with a bow?", ("violin", "viola", "fiddle")),
    ("Which instrument is a thin tube you blow across, held sideways?", ("flute",)),
    ("Which brass instrument has a slide?", ("trombone",)),
    # sports and games
    ("In which sport do you hit a small ball over a net with a racket?", ("tennis", "badminton", "table tennis")),
    ("In which sport do players throw a ball through a hoop?", ("basketball", "netball")),
    ("In which sport do you hit a ball with a bat and run around bases?", ("baseball", "softball", "rounders")),
    ("What sport do people do in a pool?", ("swimming", "swim", "diving")),
    ("In which game do you move a king, a queen and knights on a board?", ("chess",)),
    ("What do golfers try to hit their ball into?", ("hole", "cup")),
    # rooms and furniture
    ("In which room do people usually sleep?", ("bedroom",)),
    ("In which room do people usually cook?", ("kitchen",)),
    ("In which room do you take a bath?", ("bathroom",)),
    ("What do you sit on at a table?", ("chair", "chairs", "stool", "bench")),
    ("What piece of furniture do you sleep on?", ("bed",)),
    ("What do you open to let fresh air into a room?", ("window", "windows", "door")),
    # weather
    ("What falls from the sky in drops on a wet afternoon?", ("rain", "raindrops")),
    ("What flakes fall from the sky when it is freezing?", ("snow", "snowflakes")),
    ("What is the flash of light in the sky during a storm called?", ("lightning",)),
    ("What loud rumble follows lightning?", ("thunder",)),
    ("What do you carry to stay dry in the rain?", ("umbrella",)),
    ("What moving air makes kites fly?", ("wind", "breeze")),
    # family
    ("What is your mother's mother to you?", ("grandmother", "grandma", "granny", "nan")),
    ("What is your father's brother to you?", ("uncle",)),
    ("What is your aunt's son to you?", ("cousin",)),
    ("What do you call your brother's daughter?", ("niece",)),
    ("What do you call the man a woman is married to?", ("husband",)),
    ("What do you call your mother and father together?", ("parents",)),
    # materials
    ("What are windows usually made of?", ("glass",)),
    ("What material from trees is used to build tables?", ("wood", "timber", "oak", "pine")),
    ("What are tin cans made of?", ("metal", "tin", "steel", "aluminium", "aluminum")),
    ("What are bricks made from?", ("clay", "mud")),
    ("What is a candle usually made of?", ("wax",)),
    ("What soft material from a plant are T-shirts made of?", ("cotton",)),
    # the body
    ("How many knees does a person have?", ("two", "2")),
    ("What organ pumps blood around the body?", ("heart",)),
    ("What organ do you think with?", ("brain",)),
    ("What joint is in the middle of your leg?", ("knee",)),
    ("Which body part do you wear a ring on?", ("finger", "fingers")),
    ("What hair grows on a man's chin?", ("beard",)),
    # feelings
    ("How does someone usually feel when they cry?", ("sad", "upset", "unhappy")),
    ("How do people feel when they smile and laugh?", ("happy", "glad", "joyful")),
    ("How do you feel when you have not slept enough?", ("tired", "sleepy", "exhausted")),
    ("How do you feel when you skipped lunch?", ("hungry",)),
    ("How do you feel when you want a drink?", ("thirsty",)),
    ("How does someone feel when a loud bang in the dark startles them?", ("scared", "afraid", "frightened")),
)

SETS = {"report": GENERAL, "tuning": GENERAL_TUNING}
"""The general questions asked with each split of the recall benchmark."""
